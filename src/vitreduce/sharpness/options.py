"""The options of a sharpness measurement, defined once for the CLI, the study spec and the Python API.

Each field is named as its CLI flag (``top_k`` is ``--top-k``) and as its key in a study spec's
``analysis:`` section; ``vitreduce sharpness`` builds the options from its flags,
``vitreduce.study.analysis.AnalysisConfig`` extends them, and ``analyze_sharpness`` takes them.
The defaults here are the CLI's (one checkpoint, measured carefully); a study overrides some.
"""
from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vitreduce.errors import VitreduceError

# The published defaults: SAM's rho (Foret et al. 2021), and ASAM's rho and eta (Kwon et al. 2021; the
# defaults of the ASAM class in the authors' code, SamsungLabs/ASAM, asam.py).
SAM_RHO = 0.05
ASAM_RHO = 0.5
ASAM_ETA = 0.01

Method = Literal["power", "lanczos"]  # of the top eigenvalues (vitreduce.sharpness.hessian.top_eigenvalues)
METHODS: tuple[str, ...] = get_args(Method)


class SharpnessOptions(BaseModel):
    """What to measure and on which fixed subset of the data (see ``vitreduce sharpness --help``)."""

    model_config = ConfigDict(extra="forbid")

    split: str = "train"  # sharpness of the training loss
    batches: int = Field(10, ge=1)  # fixed batches the loss averages
    batch_size: int = Field(64, ge=1)  # images per batch
    seed: int = 0  # of the data subset and of the random vectors
    top_k: int = Field(1, ge=0)  # top Hessian eigenvalues to find (0: none)
    iters: int = Field(100, ge=1)  # power iterations per eigenvalue (Lanczos: iterations) at most
    tol: float = Field(1e-3, gt=0)  # relative residual of an eigenvalue that counts as converged
    trace_samples: int = 100  # Rademacher vectors of the Hutchinson trace (0: no trace)
    rho: float = Field(SAM_RHO, gt=0, allow_inf_nan=False)  # SAM radius (Foret et al. 2021)
    method: Method = "power"  # power: k + 2 model-sized vectors; lanczos: one per iteration, fewer products
    adaptive: bool = False  # also ASAM sharpness (Kwon et al. 2021)
    asam_rho: float = Field(ASAM_RHO, gt=0, allow_inf_nan=False)  # ASAM radius, in the scaled coordinates
    eta: float = Field(ASAM_ETA, ge=0, allow_inf_nan=False)  # ASAM: T_w = |w| + eta on weight tensors

    @field_validator("trace_samples")
    @classmethod
    def _trace_samples(cls, value: int) -> int:
        if value < 0 or value == 1:
            raise ValueError("must be 0 (no trace) or >= 2 for a standard error")
        return value

    @classmethod
    def checked(cls, **values: Any) -> SharpnessOptions:
        """Options from keyword values; a bad value raises VitreduceError naming the CLI flag to change.

        Args:
            **values: fields of SharpnessOptions (the rest keep their defaults).
        """
        try:
            return cls(**values)
        except ValidationError as err:
            raise VitreduceError("; ".join(_flag_problem(error) for error in err.errors())) from None

    def subset(self) -> dict[str, Any]:
        """The keywords of ``vitreduce.sharpness.batches.load_batches`` that choose the fixed data subset."""
        return {"split": self.split, "batches": self.batches, "batch_size": self.batch_size, "seed": self.seed}

    def planned_products(self) -> int:
        """Hessian-vector products planned at most: the progress total (Lanczos shares its products over k)."""
        searches = self.top_k if self.method == "power" else min(self.top_k, 1)
        return self.iters * searches + self.trace_samples


_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt")}


def _flag_problem(error: dict[str, Any]) -> str:
    """One pydantic error as '--flag must be ... (got value)', as the CLI user types the option."""
    name = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "extra_forbidden":
        return f"unknown sharpness option {name!r}; valid ones: {', '.join(SharpnessOptions.model_fields)}"
    flag = "--" + name.replace("_", "-")
    if error["type"] in _BOUNDS:
        symbol, limit = _BOUNDS[error["type"]]
        what = f"must be {symbol} {error['ctx'][limit]:g}"
    elif error["type"] == "finite_number":
        what = "must be a finite number"
    elif error["type"] == "literal_error":
        what = f"must be {error['ctx']['expected']}"
    elif error["type"] == "value_error":  # our validators' messages read on from the flag
        what = error["msg"].removeprefix("Value error, ")
    else:
        what = f"{error['msg'][:1].lower()}{error['msg'][1:]}"
    return f"{flag} {what} (got {error.get('input')!r})"
