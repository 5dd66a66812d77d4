# The action-loop launcher of the Python runtime built on the action proxy (PROXY_ACTION_LOOP=1).
#
# Run as `python3 launcher.py <function>` in the action's folder: it imports `main__` (the action's
# code; bin/compile puts it there), acknowledges on fd 3 when the proxy waits for that, then reads one
# activation per line on stdin, `{"value": {...}, "activation_id": ..., ...}`, calls the function with the
# value and writes its result as one line of JSON on fd 3. Every other field of the line is the activation's
# environment as `__OW_<FIELD>`; the init's `env` is the process's own. An exception is the activation's
# `{"error": "<exception text>"}`, its traceback in the logs, as OpenWhisk's Python runtime answers it.

import glob
import json
import os
import sys
import traceback


def activate_virtualenv(folder):
    """Makes the packages of an action's `virtualenv/` importable: virtualenv's activate_this.py when it
    has one, else its site-packages (a `python -m venv` has no activate_this.py)."""
    if not os.path.isdir(folder):
        return
    activate_this = os.path.join(folder, "bin", "activate_this.py")
    if os.path.exists(activate_this):
        with open(activate_this) as source:
            exec(compile(source.read(), activate_this, "exec"), dict(__file__=activate_this))
        return
    for site_packages in glob.glob(os.path.join(folder, "lib", "python3*", "site-packages")):
        sys.path.insert(0, site_packages)


def main():
    function_name = sys.argv[1] if len(sys.argv) > 1 else "main"
    sys.path.insert(0, os.getcwd())
    activate_virtualenv(os.path.abspath("virtualenv"))
    import main__  # the action; an error here ends the process, and the init says it could not start

    function = getattr(main__, function_name, None)
    if not callable(function):
        sys.stderr.write("The action has no function '%s'.\n" % function_name)
        sys.exit(1)

    answers = os.fdopen(3, "wb")

    def answer(result):
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write(json.dumps(result, ensure_ascii=False).encode("utf-8") + b"\n")
        answers.flush()

    if os.environ.get("__OW_WAIT_FOR_ACK"):
        answer({"ok": True})
    for line in sys.stdin:
        message = json.loads(line)
        for key, value in message.items():
            if key != "value":
                os.environ["__OW_" + key.upper()] = value if isinstance(value, str) else json.dumps(value)
        try:
            result = function(message.get("value", {}))
        except Exception as error:
            traceback.print_exc()
            result = {"error": str(error)}
        answer(result)


if __name__ == "__main__":
    main()
