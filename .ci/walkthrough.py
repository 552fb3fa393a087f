#!/usr/bin/env python3
"""Runs the README's "Call it" walkthrough as written, with the real grpcurl,
against both services started by `heft` on fresh SQLite databases.

Every line of the walkthrough's code block runs in order in bash; the
placeholders <user-id>, <entry-id>, <entry-change-token>, <user-change-token>
and <uuid> are filled from earlier answers (CreateUser, CreateEntry, the last
ListEntryChanges and ListUserChanges) or a new UUID. Any line that fails fails the run.

Usage: .ci/walkthrough.py HEFT_BINARY GRPCURL_BINARY
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def walkthrough_lines(after="## Call it"):
    text = open(README, encoding="utf-8").read()
    section = text.split(after, 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def credential(heft, name, scopes, env):
    """`heft users credentials new`: the token (second line) and the entry."""
    out = subprocess.run([heft, "users", "credentials", "new", "--name", name, "--scopes", scopes],
                         env=env, capture_output=True, text=True, check=True).stdout
    return out.splitlines()[1].strip(), out[out.index("[[credential]]"):]


def wait_for_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    sys.exit(f"nothing listens on port {port}")


def wait_until_free(ports, timeout=30):
    """The test step's last processes (whose ports come from the ephemeral
    range, where 50051 and 50052 lie) may still be closing: wait for them
    rather than fail on a port they hold for a moment longer."""
    deadline = time.time() + timeout
    while True:
        busy = []
        for port in ports:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    busy.append(port)
        if not busy or time.time() >= deadline:
            if busy:
                print(f"ports still in use, starting anyway: {busy}", flush=True)
                subprocess.run(["ss", "-tanp"], check=False)
            return
        time.sleep(0.5)


def main():
    heft, grpcurl = sys.argv[1], sys.argv[2]
    workdir = tempfile.mkdtemp(prefix="heft-walkthrough-")
    bindir = os.path.dirname(os.path.abspath(grpcurl))
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HEFT_LOG="warn")
    for var in [v for v in env if v.startswith("HEFT_")]:
        if var != "HEFT_LOG":
            del env[var]
    run_block(heft, env, workdir, walkthrough_lines())
    # The same services with credentials: an admin (every scope) and a
    # reader, from the CLI; the internal token a random one.
    admin, admin_entry = credential(heft, "admin", "*", env)
    reader, reader_entry = credential(heft, "warehouse-sync", "entries.read", env)
    path = os.path.join(workdir, "credentials.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(admin_entry + reader_entry)
    secured = dict(env, HEFT_CREDENTIALS_FILE=path, HEFT_INTERNAL_TOKEN=uuid.uuid4().hex)
    run_block(heft, secured, workdir, walkthrough_lines("### With credentials"),
              dict(ADMIN=admin, READER=reader))


def run_block(heft, env, workdir, lines, shell_vars=None):
    """Starts both services with `env`, runs `lines` in order, stops them."""
    wait_until_free([50051, 50052, 9051, 9052])
    services = subprocess.Popen([os.path.abspath(heft)], cwd=workdir, env=env)
    shell_env = dict(env, **(shell_vars or {}))
    shell_env["PATH"] = f"{os.path.dirname(os.path.abspath(heft))}:{shell_env['PATH']}"
    try:
        wait_for_port(50051)
        wait_for_port(50052)
        time.sleep(1)
        filled = {"<uuid>": str(uuid.uuid4())}
        prelude = "U=localhost:50051; E=localhost:50052\n"
        for line in lines:
            if line.startswith("U=") or line.startswith("export "):
                prelude += line + "\n"
                continue
            command = line
            for placeholder, value in filled.items():
                command = command.replace(placeholder, value)
            missing = re.findall(r"<[a-z-]+>", command)
            if missing:
                sys.exit(f"no value for {missing} in: {line}")
            print(f"$ {command}", flush=True)
            result = subprocess.run(
                ["bash", "-c", prelude + command],
                env=shell_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            print(result.stdout, end="")
            print(result.stderr, end="", file=sys.stderr)
            if result.returncode != 0:
                sys.exit(f"walkthrough line failed (exit {result.returncode}): {line}")
            if "/CreateUser" in line:
                filled["<user-id>"] = json.loads(result.stdout)["id"]
            if "/CreateEntry" in line:
                filled["<entry-id>"] = json.loads(result.stdout)["id"]
            for method, placeholder in (("/ListEntryChanges", "<entry-change-token>"),
                                        ("/ListUserChanges", "<user-change-token>")):
                if method in line:
                    answer = json.loads(result.stdout)
                    filled[placeholder] = (answer.get("nextChangeToken")
                                           or answer["next_change_token"])
            if "/Authenticate" in line:
                answer = json.loads(result.stdout)
                filled["<access-token>"] = answer.get("accessToken") or answer["access_token"]
        print(f"walkthrough: every line ran ({len(lines)} lines)")
    finally:
        services.terminate()
        services.wait(timeout=30)


if __name__ == "__main__":
    main()
