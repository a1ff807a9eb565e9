"""paraknow: parametric knowledge transfer between language models (Zhong et al., ICLR 2024)."""

__version__ = "0.1.0"


def load_model(ref, dtype=None, device=None, **kwargs):
    """Load a model reference as `(model, tokenizer)`; see `paraknow.models.load_model`."""
    from .models import load_model as _load_model

    return _load_model(ref, dtype=dtype, device=device, **kwargs)


__all__ = ["load_model", "__version__"]
