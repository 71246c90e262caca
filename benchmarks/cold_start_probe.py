"""A fresh function instance, timed: runs as its own process with the function's environment, imports the
handler (Lambda's init phase) and invokes it once with the event file given. Prints one JSON line:
seconds from the parent's spawn to init done and to the first result."""

from __future__ import annotations

import importlib
import json
import sys
import time
import uuid


class Context:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}"
        self.memory_limit_in_mb = "1024"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def main() -> None:
    spawned, handler_name, python_path, event_file = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    interpreter_s = time.time() - spawned
    for entry in reversed(json.loads(python_path)):
        sys.path.insert(0, entry)
    module_name, _, function_name = handler_name.rpartition(".")
    handler = getattr(importlib.import_module(module_name), function_name)
    init_s = time.time() - spawned
    with open(event_file, encoding="utf-8") as handle:
        event = json.load(handle)
    result = handler(event, Context(module_name))
    first_s = time.time() - spawned
    print(json.dumps({"interpreter_s": interpreter_s, "init_s": init_s, "first_result_s": first_s, "result": result}))


if __name__ == "__main__":
    main()
