"""visattn: attention mechanisms that made CNNs see context, exact and lean."""
from .attention import create_attention, get_attention_class, list_attentions
from .hub import from_pretrained, push_to_hub, save_pretrained
from .models import create_model, list_models
from .models.insert import insert_attention, timm_attn_layer
from .weights import load_official

__version__ = "0.1.0"

__all__ = [
    "create_attention",
    "create_model",
    "from_pretrained",
    "get_attention_class",
    "insert_attention",
    "list_attentions",
    "list_models",
    "load_official",
    "push_to_hub",
    "save_pretrained",
    "timm_attn_layer",
    "__version__",
]
