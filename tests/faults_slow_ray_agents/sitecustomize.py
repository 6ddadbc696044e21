"""A machine too busy for Ray's agents, for the local-Ray start test: loaded at interpreter
start-up when this folder is on PYTHONPATH, it delays the start of the two agents the raylet
launches (the dashboard agent and the runtime-env agent) by FISHTUNE_TEST_SLOW_AGENT_S seconds,
longer than the raylet waits for their port files."""

import os
import sys
import time

AGENTS = ("dashboard/agent.py", "runtime_env/agent/main.py")

if os.environ.get("FISHTUNE_TEST_SLOW_AGENT_S") and sys.argv and sys.argv[0].endswith(AGENTS):
    time.sleep(float(os.environ["FISHTUNE_TEST_SLOW_AGENT_S"]))
