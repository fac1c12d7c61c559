"""visattn: attention mechanisms that made CNNs see context, exact and lean."""
from .attention import create_attention, get_attention_class, list_attentions
from .weights import load_official

__version__ = "0.1.0"

__all__ = ["create_attention", "get_attention_class", "list_attentions", "load_official", "__version__"]
