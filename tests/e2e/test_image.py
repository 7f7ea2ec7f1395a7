"""The image `hack/image` builds runs exactly as the Dockerfile's does: same user,
entrypoint, command, environment, ports and working directory."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from devtools import image

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments out."""
    joined, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        joined.append((word.upper(), rest.strip()))
        pending = ""
    return joined


def final_stage_config(text: str, base_path: str) -> image.ImageConfig:
    """What the Dockerfile's last stage sets; `$PATH` is the base image's PATH."""
    steps = instructions(text)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    env: dict[str, str] = {}
    fields: dict[str, object] = {"user": "", "entrypoint": (), "cmd": (), "workdir": "/"}
    ports: list[str] = []
    for word, rest in steps[last_from + 1:]:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value.replace("$PATH", base_path)
        elif word == "USER":
            fields["user"] = rest
        elif word == "WORKDIR":
            fields["workdir"] = rest
        elif word == "EXPOSE":
            ports += [p if "/" in p else f"{p}/tcp" for p in rest.split()]
        elif word in ("ENTRYPOINT", "CMD"):
            fields[word.lower()] = tuple(json.loads(rest))
    env.setdefault("PATH", base_path)
    return image.ImageConfig(env=env, ports=tuple(sorted(ports)), **fields)  # type: ignore[arg-type]


def test_the_dockerfile_is_read_as_docker_reads_it() -> None:
    text = 'FROM a AS b\nENV X=1\nFROM c\n# note\nENV A=1 \\\n    B="two words" P=/x:$PATH\n' \
           'USER 1:1\nWORKDIR /w\nEXPOSE 80 53/udp\nENTRYPOINT ["e"]\nCMD ["c", "d"]\n'
    assert final_stage_config(text, "/bin") == image.ImageConfig(
        user="1:1", entrypoint=("e",), cmd=("c", "d"),
        env={"A": "1", "B": "two words", "P": "/x:/bin", "PATH": "/bin"},
        ports=("53/udp", "80/tcp"), workdir="/w")


def test_the_built_image_runs_as_the_dockerfile_says() -> None:
    built = image.operator_image()
    expected = final_stage_config(DOCKERFILE.read_text(), image.BASE_PATH)
    assert built.config == expected, (
        "hack/image and the Dockerfile disagree: change devtools/image.py's OPERATOR_CONFIG "
        f"or the Dockerfile\n built:      {built.config}\n Dockerfile: {expected}")
