"""What the service tells about tasks it created: tasks_ready, task_get and id_list.

A task's life cycle is read from the ``Store`` at the moment of the call: queued, then handed
to the model halfway to its completion time, then done (task_get collects it, so tasks_ready
stops listing it), then expired after ``results_ttl_s``. id_list queries are judged by
``_idlist``, the emulator's own reading of the docs.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec
from aiohttp import web

from llmtasks.emulator import _wire as w
from llmtasks.emulator._idlist import Query, parse_query
from llmtasks.emulator._models import CATALOGUE, RESOLVE
from llmtasks.emulator._results import llm_result
from llmtasks.emulator._rules import reasons
from llmtasks.emulator._state import CreatedTask, Service
from llmtasks.emulator._wire import Reply

_ANY_LIST: Final = msgspec.json.Decoder(list[Any])
READY_LIMIT: Final = 1000


class TaskQueries:
    """The tasks_ready, task_get and id_list handlers of one ``Service``."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def tasks_ready(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        se = request.match_info["se"]
        if se not in CATALOGUE:
            return w.not_found(started)
        service = self._service
        result = [
            {
                "id": task.id,
                "se": se,
                "se_type": w.FUNCTION,
                "date_posted": w.utc_datetime(task.posted_at),
                "tag": task.tag,
                "endpoint": f"/v3/ai_optimization/{se}/llm_responses/task_get/{task.id}",
            }
            for task in service.store.ready(se, now, READY_LIMIT)
        ]
        task_id = service.new_id(service.clock.now())
        out = w.call_task(task_id, se, "tasks_ready", started, result)
        return Reply(200, 20000, w.envelope(w.OK, started, [out]))

    def task_get(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        se = request.match_info["se"]
        if se not in CATALOGUE:
            return w.not_found(started)
        service = self._service
        task_id = request.match_info["id"]
        path = w.path_of(w.API, se, w.FUNCTION, "task_get", task_id)
        found = service.store.lookup(task_id)
        code: tuple[int, str] | None = None
        if found is None or found[0].engine != se:
            code, data = w.TASK_NOT_FOUND, w.to_data(se, {})
        else:
            task, done_mono = found
            data = task.data
            if now < done_mono:
                posted_mono = service.clock.mono(task.posted_at)
                halfway = posted_mono + (done_mono - posted_mono) / 2
                code = w.TASK_IN_QUEUE if now < halfway else w.TASK_HANDED
            elif now - done_mono > service.config.results_ttl_s:
                code = w.RESULTS_EXPIRED
        if code is not None:
            out = w.TaskOut(task_id, code[0], code[1], w.seconds(0.0), 0.0, 0, path, data, None)
            return Reply(200, 20000, w.envelope(w.OK, started, [out]))
        service.store.collect(task, now)
        return Reply(200, 20000, self.result_envelope(task, done_mono, started))

    def result_envelope(self, task: CreatedTask, done_mono: float, started: float) -> bytes:
        """task_get's envelope for a done task (also the body of its postback)."""
        service = self._service
        se = task.engine
        path = w.path_of(w.API, se, w.FUNCTION, "task_get", task.id)
        elapsed = w.seconds(time.perf_counter() - started)
        data = task.data
        if task.failed:
            code, message = w.TASK_FAILED
            out = w.TaskOut(task.id, code, message, elapsed, 0.0, 0, path, data, None)
            return w.envelope(w.OK, started, [out], 0.0)
        family = RESOLVE[se][task.model_name]
        result = llm_result(
            engine=se,
            model_name=family.dated,
            user_prompt=task.user_prompt,
            done_unix=service.clock.wall(done_mono),
            web_search=data.get("web_search") is True,
            reasoning=reasons(se, family, data),
            cost_usd=task.cost_usd,
            seed=service.config.seed,
        )
        out = w.TaskOut(task.id, 20000, "Ok.", elapsed, task.cost_usd, 1, path, data, [result])
        return w.envelope(w.OK, started, [out], task.cost_usd)

    def push_body(self, index: int) -> bytes:
        """The postback body of the ``index``-th created task."""
        store = self._service.store
        return self.result_envelope(
            store.created[index], store.done_mono(index), time.perf_counter()
        )

    def id_list(self, request: web.Request, body: bytes, now: float, started: float) -> Reply:
        try:
            items = _ANY_LIST.decode(body)
        except w.UNREADABLE:
            return w.refusal(w.INVALID_POST, started)
        if not items:
            return w.refusal(w.INVALID_POST, started)
        service = self._service
        path = [p for p in request.path.split("/") if p]
        base = f"{request.scheme}://{request.host}"
        wall = service.clock.wall(now)
        out: list[w.TaskOut] = []
        for item in items:
            task_id = service.new_id(wall)
            echo = {k: v for k, v in item.items() if v is not None} if type(item) is dict else {}
            data = {"api": w.API, "function": "id_list", **echo}
            query = parse_query(item, wall)
            if not isinstance(query, Query):
                code, message = query
                out.append(
                    w.TaskOut(task_id, code, message, w.seconds(0.0), 0.0, 0, path, data, None)
                )
                continue
            indexes = service.store.posted_between(query.from_unix, query.to_unix)
            if query.descending:
                indexes.reverse()
            result = [
                self._id_list_item(i, now, base, query.include_metadata)
                for i in indexes[query.offset : query.offset + query.limit]
            ]
            elapsed = w.seconds(time.perf_counter() - started)
            out.append(
                w.TaskOut(task_id, 20000, "Ok.", elapsed, 0, len(result), path, data, result)
            )
        return Reply(200, 20000, w.envelope(w.OK, started, out))

    def _id_list_item(self, index: int, now: float, base: str, metadata: bool) -> dict[str, Any]:
        service = self._service
        task = service.store.created[index]
        done_mono = service.store.done_mono(index)
        done = done_mono <= now
        failed = done and task.failed
        return {
            "id": task.id,
            "url": f"{base}/v3/ai_optimization/{task.engine}/llm_responses/task_post",
            "datetime_posted": w.utc_datetime(task.posted_at),
            "datetime_done": w.utc_datetime(service.clock.wall(done_mono)) if done else None,
            "status": "failed" if failed else "ok" if done else "in_progress",
            "cost": 0.0 if task.failed else task.cost_usd,
            "metadata": task.data if metadata else None,
        }
