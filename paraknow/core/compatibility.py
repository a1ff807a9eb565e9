"""Can knowledge move from this teacher to this student? Module sets, tokenizers, and the compatibility
report the Models and Mapping pages show and every plan checks first (`check_transferable`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .architecture import EMBED_ROLES, LAYER_ROLES, MODULE_GROUPS, ModelInfo
from .errors import ParaknowError

DEFAULT_MODULES = ("attn", "ffn", "embed")  # the official code's default (--include_emb True)


def resolve_roles(modules) -> list[str]:
    """Expand module groups into roles, in a stable order; unknown names are an error."""
    if isinstance(modules, str):
        modules = [m for m in modules.split(",") if m.strip()]
    roles = []
    for item in modules:
        item = item.strip()
        expanded = MODULE_GROUPS.get(item, (item,) if item in LAYER_ROLES + EMBED_ROLES else None)
        if expanded is None:
            raise ParaknowError(f"unknown module '{item}'; use groups attn, ffn, embed or roles "
                                f"{', '.join(LAYER_ROLES + EMBED_ROLES)}.")
        roles += [r for r in expanded if r not in roles]
    if not roles:
        raise ParaknowError("no modules selected: choose at least one of attn, ffn, embed.")
    return [r for r in LAYER_ROLES + EMBED_ROLES if r in roles]


def default_roles() -> list[str]:
    """The roles of the default module set (before the tokenizer check drops embeddings)."""
    return resolve_roles(DEFAULT_MODULES)


def tokenizer_mismatch(teacher: ModelInfo, student: ModelInfo) -> str | None:
    """Why embeddings cannot move between the two vocabularies, or None when nothing says they differ
    (token -> id content compared by `models.vocab_fingerprint`; see `tokenizers_verified`)."""
    if teacher.vocab_size != student.vocab_size:
        return f"the vocabularies differ in size (teacher {teacher.vocab_size}, student {student.vocab_size} tokens)"
    if teacher.vocab_hash and student.vocab_hash and teacher.vocab_hash != student.vocab_hash:
        return (f"the tokenizers differ: same size ({teacher.vocab_size} tokens) but different token -> id "
                f"content (vocabulary sha256 {teacher.vocab_hash[:12]} vs {student.vocab_hash[:12]})")
    return None


def tokenizers_verified(teacher: ModelInfo, student: ModelInfo) -> bool:
    """Both vocabularies were fingerprinted and are equal (ModelInfo from `describe(model, tokenizer)`)."""
    return bool(teacher.vocab_hash) and teacher.vocab_hash == student.vocab_hash


UNVERIFIED_NOTE = ("embeddings skipped: the tokenizers were not compared (describe both models with their "
                   "tokenizers, or request embed explicitly).")


@dataclass
class ModuleFit:
    """One module role of the pair: its [out, in] shapes and whether it can transfer."""
    module: str
    teacher: list
    student: list
    transfers: bool
    reason: str  # why not ("" when it transfers)


@dataclass
class CompatibilityReport:
    """Which roles can transfer and why not; `errors` block a plan, `notes` inform."""
    rows: list[ModuleFit]
    errors: dict[str, str]  # kind ('depth' | 'width') -> message
    notes: list[str]
    embedding_notes: list[str]  # the notes that matter only to a plan that transfers embeddings
    tokenizer_mismatch: str | None  # why embeddings cannot move, None when nothing says they differ
    teacher_gqa: bool
    student_gqa: bool
    roles: list[str] | None = None  # the roles a plan transfers (set by check_transferable)

    @property
    def vocab_match(self) -> bool:
        return self.tokenizer_mismatch is None

    @property
    def transferable(self) -> int:
        """How many roles can transfer."""
        return sum(row.transfers for row in self.rows)


def compatibility(teacher: ModelInfo, student: ModelInfo, roles=None) -> CompatibilityReport:
    """Which roles can transfer, and why not.

    `roles`: the roles a plan would transfer; only those must be at least as wide in the teacher
    (None: every decoder-layer role, as the Models page shows it).
    """
    mismatch = tokenizer_mismatch(teacher, student)
    rows = [_fit(role, teacher.shapes[role], student.shapes[role], mismatch) for role in LAYER_ROLES + EMBED_ROLES]
    errors = {}
    if teacher.n_layers < student.n_layers:
        errors["depth"] = (f"the teacher has {teacher.n_layers} layers and the student {student.n_layers}: "
                           "pick a deeper teacher or a manual layer map.")
    selected = LAYER_ROLES if roles is None else roles
    bad = [r.module for r in rows if not r.transfers and r.module in LAYER_ROLES and r.module in selected]
    if bad:
        errors["width"] = (f"the teacher is narrower than the student for {', '.join(bad)}: pick a wider "
                           "teacher or leave these modules out.")
    notes, embedding_notes = [], []
    if mismatch:
        embedding_notes.append(f"embeddings skipped: {mismatch}.")
    if teacher.family != student.family:
        notes.append(f"different families ({teacher.family} -> {student.family}): shapes allow it, "
                     "but the paper only transfers within one family.")
    if student.tied_embeddings:
        embedding_notes.append("the student ties lm_head to embed_tokens: embeddings transfer into "
                               "embed_tokens only.")
    return CompatibilityReport(rows=rows, errors=errors, notes=notes + embedding_notes,
                               embedding_notes=embedding_notes, tokenizer_mismatch=mismatch,
                               teacher_gqa=teacher.n_kv_heads < teacher.n_heads,
                               student_gqa=student.n_kv_heads < student.n_heads)


def _fit(role: str, t_shape: list, s_shape: list, mismatch: str | None) -> ModuleFit:
    if role in EMBED_ROLES and mismatch:
        return ModuleFit(role, t_shape, s_shape, False, mismatch)
    if t_shape[0] >= s_shape[0] and t_shape[1] >= s_shape[1]:
        return ModuleFit(role, t_shape, s_shape, True, "")
    return ModuleFit(role, t_shape, s_shape, False, f"teacher {t_shape} smaller than student {s_shape}")


def transfer_roles(teacher: ModelInfo, student: ModelInfo, modules) -> list[str]:
    """The roles a plan transfers. `modules` None is the default set, whose embeddings stay only when
    the tokenizers are known to match; an explicit request for embeddings on different tokenizers is
    refused (on tokenizers that were not compared, equal vocabulary sizes let it through)."""
    mismatch = tokenizer_mismatch(teacher, student)
    if modules is None:
        keep = tokenizers_verified(teacher, student)
        return [r for r in default_roles() if keep or r not in EMBED_ROLES]
    roles = resolve_roles(modules)
    if mismatch and any(r in EMBED_ROLES for r in roles):
        raise ParaknowError(f"embeddings requested but {mismatch}: leave embed, embed_tokens and lm_head "
                            "out of --modules, or use a student with the teacher's tokenizer.")
    return roles


def check_transferable(teacher: ModelInfo, student: ModelInfo, config) -> CompatibilityReport:
    """Raise the first blocking compatibility error of the modules a TransferConfig selects (depth is
    fine with a manual layer map); return the report, with `roles` the ones the plan transfers."""
    roles = transfer_roles(teacher, student, config.modules)
    report = compatibility(teacher, student, roles)
    errors = dict(report.errors)
    if config.layers == "manual":
        errors.pop("depth", None)
    if errors:
        raise ParaknowError(next(iter(errors.values())))
    report.roles = roles
    return report
