#!/usr/bin/env python3
"""Static check of docker-compose.yml: catches a broken start order, a missing
health check or an open (token-less) service without needing a Docker daemon."""

import sys

import yaml

HEFT = ("users", "entries")
# The gRPC and metrics ports each heft service must publish.
PORTS = {"users": ("50051", "9051"), "entries": ("50052", "9052")}
SECRETS = ("HEFT_API_TOKENS", "HEFT_INTERNAL_TOKEN", "HEFT_CREDENTIALS_FILE")


def env_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...] form
        env = dict(item.partition("=")[::2] for item in env)
    return env


def check(compose):
    errors = []
    services = compose.get("services") or {}
    for name in ("postgres",) + HEFT:
        if name not in services:
            errors.append(f"service {name!r} is missing")
    for name, service in services.items():
        health = service.get("healthcheck") or {}
        if not health.get("test") or health.get("disable"):
            errors.append(f"{name}: no healthcheck")
    for name in HEFT:
        if name not in services:
            continue
        service = services[name] or {}
        depends = service.get("depends_on") or {}
        if not isinstance(depends, dict) or not depends:
            errors.append(f"{name}: depends_on must use the long form with a condition")
        else:
            for dep, spec in depends.items():
                if (spec or {}).get("condition") != "service_healthy":
                    errors.append(f"{name}: depends_on {dep} lacks condition: service_healthy")
            if "postgres" not in depends:
                errors.append(f"{name}: does not wait for postgres")
        published = " ".join(str(p) for p in service.get("ports") or [])
        for port in PORTS[name]:
            if f":{port}:" not in published and not published.startswith(f"{port}:"):
                errors.append(f"{name}: port {port} is not published")
        test = " ".join(str(t) for t in (service.get("healthcheck") or {}).get("test") or [])
        if "healthcheck" not in test:
            errors.append(f"{name}: the health check must use the readiness-based `healthcheck` subcommand")
        env = env_of(service)
        if not any(str(env.get(var) or "").strip() for var in ("HEFT_API_TOKENS", "HEFT_CREDENTIALS_FILE")):
            errors.append(f"{name}: neither HEFT_API_TOKENS nor HEFT_CREDENTIALS_FILE is set")
        if not str(env.get("HEFT_INTERNAL_TOKEN") or "").strip():
            errors.append(f"{name}: HEFT_INTERNAL_TOKEN is not set")
        for var in SECRETS:
            value = str(env.get(var) or "").strip()
            # A secret comes from the environment with no fallback: either
            # ${VAR:?message} (required) or a path to a mounted file.
            if value and var != "HEFT_CREDENTIALS_FILE" and not (
                value.startswith("${") and ":?" in value and value.endswith("}")
            ):
                errors.append(f"{name}: {var} must be required from the environment "
                              f"(${{{var}:?…}}), with no value or default in the file")
        if str(env.get("HEFT_ALLOW_CLEARTEXT_PEER") or "").lower() != "true":
            errors.append(f"{name}: the peer URL is http:// on compose's network: "
                          "HEFT_ALLOW_CLEARTEXT_PEER must be \"true\" (with a comment why)")
    return errors


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"
    try:
        with open(path, encoding="utf-8") as f:
            compose = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        sys.exit(f"{path}: {e}")
    if not isinstance(compose, dict):
        sys.exit(f"{path}: not a mapping")
    errors = check(compose)
    for error in errors:
        print(f"{path}: {error}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print(f"{path}: ok ({', '.join(compose['services'])})")


if __name__ == "__main__":
    main()
