from llmtasks._cli import run

run()
