"""A prompt's freed temporaries stay in the process (allocator.py): the next layer's
arrays of the same sizes page-fault nothing."""

import platform
import subprocess
import sys

import pytest

import llama3_np
from llama3_np.allocator import keep_freed_memory
from tests.checkpoints.gguf import (byte_level_model_config, byte_level_tokenizer_metadata,
                                    write_llama_gguf)
from tests.conftest import REPO
from tests.tiny import random_weights

# Three 4 MiB arrays a "layer", allocated, written and freed 20 times: the page faults of
# those 20 layers, and whether the thresholds were set.
LAYERS = """
import resource, sys
import numpy as np
from llama3_np.allocator import keep_freed_memory

kept = sys.argv[1] == "kept" and keep_freed_memory()

def layer():
    return [np.ones(1 << 20, dtype=np.float32) for _ in range(3)]

layer(), layer()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    layer()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(setting: str) -> tuple:
    shown = subprocess.run([sys.executable, "-c", LAYERS, setting], capture_output=True,
                           text=True, cwd=REPO, check=True).stdout.split()
    return shown[0] == "True", int(shown[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_freed_temporaries_are_reused_without_page_faults():
    kept, faults = page_faults("kept")
    assert kept and faults == 0
    kept, faults = page_faults("glibc's own")  # it trims the heap after every layer
    assert not kept and faults > 20 * 256  # at least a MiB of each layer faulted again


def test_load_sets_the_thresholds(tmp_path):
    config = byte_level_model_config()
    path = write_llama_gguf(tmp_path / "model.gguf", config, random_weights(config, seed=2),
                            "F32", metadata=byte_level_tokenizer_metadata())
    keep_freed_memory.cache_clear()
    llama3_np.load(path)
    assert keep_freed_memory.cache_info().currsize == 1
