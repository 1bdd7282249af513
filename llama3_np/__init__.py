"""llama3_np: Llama 3 inference in plain NumPy, tensor by tensor.

    import llama3_np
    model = llama3_np.load("weights/SmolLM2-135M-Instruct.Q4_1.gguf")
    print(model.generate("The capital of France is", max_tokens=16).text)
"""

from .errors import CheckpointError, ConfigError, InputError, Llama3Error, TokenizerError

__all__ = ["load", "Llama", "Completion", "Llama3Error", "CheckpointError", "ConfigError",
           "InputError", "TokenizerError"]


def __getattr__(name):
    # The API is imported on first use, so `import llama3_np.config` stays light.
    if name in ("load", "Llama", "Completion"):
        from . import llama

        return getattr(llama, name)
    raise AttributeError(f"module 'llama3_np' has no attribute '{name}'")
