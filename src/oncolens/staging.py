"""TNM strings to stage groups (seed 003): parse, validate, and map to stage 0, I, II, III or IV.

Every public name says ``tnm``: a stage here is a TNM stage group, never a training stage
(:mod:`oncolens.training.stages`).

Two rules:

* ``generic`` -- seed 003's Table 2 (after the NCI): Tis N0 M0 is stage 0 (abnormal cells, no
  cancer yet); any M1 is stage IV (spread to a distant organ); any other cancer is "I-III".
* ``ajcc`` -- a simplified, organ-agnostic AJCC-like table (documented below; real AJCC tables
  differ by organ and also use grade and markers, so this is for research labels, not for care):

  ======================  =====
  T / N / M               stage
  ======================  =====
  any T, any N, M1        IV
  Tis N0 M0               0
  T1 N0 M0                I
  T2-T3 N0 M0             II
  T0-T2 N1 M0             II
  T3 N1 M0                III
  any T N2-N3 M0          III
  T4 any N M0             III
  ======================  =====

An unknown part (TX, NX, MX) gives no stage unless M1 decides it; T0 N0 M0 (no tumour) has none.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import pandas as pd

from .errors import ConfigError, DataError

__all__ = ["TNM", "TNMError", "parse_tnm", "tnm_stage", "tnm_stage_column", "TNM_STAGES", "TNM_RULES"]

#: the stage groups of the AJCC rule (the generic rule's "I-III" stands for I, II or III)
TNM_STAGES = ("0", "I", "II", "III", "IV")
TNM_RULES = ("generic", "ajcc")

_TNM = re.compile(
    r"^\s*(?P<prefix>c|p|yc|yp|r|a)?\s*"
    r"T\s*(?P<t>X|is|[0-4])(?P<tsub>[a-d])?(?:\((?:m|\d+)\))?\s*[,;/ -]?\s*"
    r"(?:c|p)?N\s*(?P<n>X|[0-3])(?P<nsub>[a-c]|mi)?\s*[,;/ -]?\s*"
    r"(?:c|p)?M\s*(?P<m>X|[01])(?P<msub>[a-d])?\s*$",
    re.IGNORECASE,
)


class TNMError(DataError):
    """A TNM string that cannot be parsed; the message says what is wrong."""


@dataclass(frozen=True)
class TNM:
    """A parsed TNM classification: ``t`` in X, is, 0-4; ``n`` in X, 0-3; ``m`` in X, 0-1."""

    t: str
    n: str
    m: str
    t_sub: str = ""
    n_sub: str = ""
    m_sub: str = ""
    prefix: str = ""

    def __str__(self) -> str:
        return f"{self.prefix}T{self.t}{self.t_sub}N{self.n}{self.n_sub}M{self.m}{self.m_sub}"


def parse_tnm(text: str) -> TNM:
    """Parse strings such as ``T2N0M0``, ``pT1a N1 M0``, ``Tis N0 M0``, ``TX NX MX``.

    >>> parse_tnm("pT1a N1mi M0")
    TNM(t='1', n='1', m='0', t_sub='a', n_sub='mi', m_sub='', prefix='p')
    """
    if not isinstance(text, str) or not text.strip():
        raise TNMError("empty TNM string")
    match = _TNM.match(text)
    if not match:
        hints = []
        upper = text.upper()
        for part, allowed in (("T", "TX, Tis, T0-T4"), ("N", "NX, N0-N3"), ("M", "MX, M0-M1")):
            if part not in upper:
                hints.append(f"missing {part} (expected one of {allowed})")
        if re.search(r"T\s*[5-9]", upper):
            hints.append("T goes up to T4")
        if re.search(r"N\s*[4-9]", upper):
            hints.append("N goes up to N3")
        if re.search(r"M\s*[2-9]", upper):
            hints.append("M is M0 or M1")
        raise TNMError(f"not a TNM string: {text!r}" + (f" ({'; '.join(hints)})" if hints else
                                                          " (expected e.g. 'T2 N1 M0', 'pT1a N0 M0', 'Tis N0 M0')"))
    t = match["t"].upper() if match["t"].lower() != "is" else "is"
    if t in ("X", "is", "0") and match["tsub"]:
        raise TNMError(f"{text!r}: T{t} takes no sub-letter")
    return TNM(t=t, n=match["n"].upper(), m=match["m"].upper(), t_sub=(match["tsub"] or "").lower(),
               n_sub=(match["nsub"] or "").lower(), m_sub=(match["msub"] or "").lower(),
               prefix=(match["prefix"] or "").lower())


def tnm_stage(tnm: TNM | str, rule: str = "ajcc") -> str | None:
    """The stage group of a TNM (``0``, ``I``..``IV``; ``I-III`` under the generic rule), or None if undeterminable."""
    if rule not in TNM_RULES:
        raise ConfigError(f"rule must be one of {TNM_RULES}, got {rule!r}")
    tnm = parse_tnm(tnm) if isinstance(tnm, str) else tnm
    if tnm.m == "1":
        return "IV"
    if tnm.m == "X":
        return None
    if tnm.t == "is" and tnm.n == "0":
        return "0"
    if tnm.t == "X" or tnm.n == "X":
        return None
    if tnm.t == "0" and tnm.n == "0":
        return None  # no evidence of a primary tumour and no nodes: nothing to stage
    if rule == "generic":
        return "I-III"
    t = 0 if tnm.t == "is" else int(tnm.t)
    n = int(tnm.n)
    if t == 4 or n >= 2:
        return "III"
    if n == 1:
        return "III" if t == 3 else "II"
    return "I" if t == 1 else "II"


def tnm_stage_column(values: pd.Series, rule: str = "ajcc") -> tuple[pd.Series, dict[str, str]]:
    """Stages for a column of TNM strings (or stages already); ``{value: reason}`` for those without one."""
    stages, problems = [], {}
    for value in values.astype(str):
        text = value.strip()
        if text.upper().removeprefix("STAGE ").strip() in TNM_STAGES + ("I-III",):
            stages.append(text.upper().removeprefix("STAGE ").strip())
            continue
        try:
            stage = tnm_stage(text, rule)
        except TNMError as exc:
            problems[value] = str(exc)
            stages.append("")
            continue
        if stage is None:
            problems[value] = "stage cannot be determined (unknown T/N/M, or no tumour)"
        stages.append(stage or "")
    return pd.Series(stages, index=values.index), problems


#: the old names, kept for one release: ``stage``/``STAGES`` also name the training stages
_RENAMED = {"stage_group": "tnm_stage", "stage_column": "tnm_stage_column", "STAGES": "TNM_STAGES", "RULES": "TNM_RULES"}


def __getattr__(name: str):
    if name in _RENAMED:
        warnings.warn(f"oncolens.staging.{name} is now {_RENAMED[name]}", DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
