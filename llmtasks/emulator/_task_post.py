"""task_post: judge each task of a body, charge for the call as a whole, create the tasks.

Tasks are judged by ``_rules``, the emulator's own reading of the docs, never the client's
validation. This is the hot path of every benchmark, so the common body (a list of plain
task objects) is decoded in one go into ``WireTask`` Structs and each task's ``data`` echo is
spliced from pre-encoded bytes. Tasks that ask for a postback or pingback are handed to the
``PushSender`` (``_postback``), which delivers them when they are done.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec
from aiohttp import web

from llmtasks.emulator import _wire as w
from llmtasks.emulator._models import CATALOGUE, RESOLVE, Family
from llmtasks.emulator._postback import PushSender, push_url
from llmtasks.emulator._rules import (
    MAX_TASKS_PER_POST,
    Refusal,
    WireTask,
    judge,
    unknown,
    unknown_fields,
)
from llmtasks.emulator._state import CreatedTask, Service
from llmtasks.emulator._wire import Reply

_WIRE_LIST: Final = msgspec.json.Decoder(list[WireTask])
_ANY_LIST: Final = msgspec.json.Decoder(list[Any])
_ENCODE: Final = w.encoder.encode
_DATA_PREFIX: Final = {se: w.data_prefix(se) for se in CATALOGUE}
_POST_PATH: Final = {
    se: msgspec.Raw(_ENCODE(w.path_of(w.API, se, w.FUNCTION, "task_post"))) for se in CATALOGUE
}


class TaskPost:
    """The task_post handler of one ``Service``."""

    def __init__(self, service: Service, push: PushSender) -> None:
        self._service = service
        self._push = push

    def __call__(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        se = request.match_info["se"]
        models = RESOLVE.get(se)
        if models is None:
            return w.not_found(started)
        entries: list[WireTask | tuple[int, str, bytes]]
        try:
            entries = list(_WIRE_LIST.decode(body))
        except w.UNREADABLE:
            # Not all plain task objects: judge element by element.
            try:
                items = _ANY_LIST.decode(body)
            except w.UNREADABLE:
                return w.refusal(w.INVALID_POST, started)
            entries = [self._decode_one(item, i, se) for i, item in enumerate(items)]
        if not entries:
            return w.refusal(w.INVALID_POST, started)

        # First pass: what each task would become, so funds can refuse the call as a whole.
        service = self._service
        policy = service.policy
        verdicts: list[Family | Refusal] = []
        n_ok = 0
        for i, entry in enumerate(entries):
            if i >= MAX_TASKS_PER_POST:
                verdicts.append(w.TOO_MANY_TASKS)
            elif isinstance(entry, WireTask):
                verdict = judge(se, entry, models, policy)
                if isinstance(verdict, Family):
                    n_ok += 1
                verdicts.append(verdict)
            else:
                verdicts.append((entry[0], entry[1]))
        cfg = service.config
        unit_cost = cfg.task_cost_usd
        total_cost = round(n_ok * unit_cost, 6)
        if n_ok and not service.money.can_pay(total_cost):
            return w.refusal(w.BALANCE_TOO_LOW, started, 402)
        service.money.pay(total_cost)

        prefix = _DATA_PREFIX[se]
        path = _POST_PATH[se]
        wall = service.clock.wall(now)
        id_prefix = service.ids.prefix(wall)
        make_id = service.ids.make
        with_prefix = w.with_prefix
        task_out = w.TaskOut
        per_task_time = w.seconds((time.perf_counter() - started) / len(entries))
        record = cfg.record
        done_at = now + cfg.completion_delay_s
        out: list[w.TaskOut] = []
        append = out.append
        for entry, verdict in zip(entries, verdicts, strict=True):
            task_id = make_id(id_prefix)
            if isinstance(entry, WireTask):
                data = with_prefix(prefix, _ENCODE(entry))
            else:
                data = with_prefix(prefix, entry[2])
            if isinstance(verdict, Family):
                append(
                    task_out(
                        task_id,
                        20100,
                        "Task Created.",
                        per_task_time,
                        unit_cost,
                        0,
                        path,
                        data,
                        None,
                    )
                )
                if record:
                    assert isinstance(entry, WireTask)
                    self._create(task_id, se, entry, wall, data, done_at)
            else:
                append(
                    task_out(
                        task_id, verdict[0], verdict[1], per_task_time, 0.0, 0, path, data, None
                    )
                )
        service.tasks_created += n_ok
        envelope = w.envelope(w.OK, started, out, total_cost, errors=len(out) - n_ok)
        return Reply(200, 20000, envelope, n_ok)

    def _create(
        self, task_id: str, se: str, task: WireTask, wall: float, data: msgspec.Raw, done_at: float
    ) -> None:
        service = self._service
        cfg = service.config
        failed = bool(cfg.task_fail_rate) and service.rng.random() < cfg.task_fail_rate
        if failed:
            # A task that fails on the service is refunded.
            service.money.refund(cfg.task_cost_usd)
        created = CreatedTask(
            id=task_id,
            engine=se,
            tag=task.tag,
            user_prompt=task.user_prompt,
            model_name=task.model_name,
            posted_at=wall,
            data_raw=data,
            cost_usd=cfg.task_cost_usd,
            failed=failed,
        )
        push = task.postback_url is not None or task.pingback_url is not None
        # Documented: postback tasks are delivered instead of listed; pingback tasks are
        # listed by tasks_ready until fetched.
        kind = push_url(created) if push else None
        index = service.store.add(created, done_at, held=kind is not None and kind[0] == "postback")
        if push:
            self._push.schedule(index)

    def _decode_one(self, item: Any, index: int, se: str) -> WireTask | tuple[int, str, bytes]:
        """Slow path: one element of a body that did not decode as plain task objects."""
        if type(item) is not dict:
            return (*w.INVALID_POST, b"{}")
        fields = {k: v for k, v in item.items() if v is not None}
        echo = _ENCODE(fields)
        if index >= MAX_TASKS_PER_POST:
            return (*w.TOO_MANY_TASKS, echo)
        names = unknown_fields(se, fields, self._service.policy)
        if names:
            return (*unknown(names), echo)
        return msgspec.convert(fields, WireTask)
