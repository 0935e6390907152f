"""Error-feedback methods, written "in gradient units" (the step size stays outside).

Notation for worker i and one tensor: ``g`` its gradient, ``C`` the compressor,
``Δ = C(u)`` its message, ``Δ̄`` the mean of all workers' messages. The
optimizer step is ``x ← x − γ·out``.

===============  ===========================  =====================================================  ======  =========
method           message ``u``                 commit                                                 out     bytes/el
===============  ===========================  =====================================================  ======  =========
NoFeedback       ``g``                         —                                                      ``Δ̄``   0
EF14             ``e + g``                     ``e ← e + g − Δ``                                      ``Δ̄``   4
EF21             ``g − hᵢ``                    ``hᵢ ← hᵢ + Δ``; ``h ← h + Δ̄``                          ``h``   8
EF21SGDM(β)      ``v' − hᵢ``                   ``vᵢ ← v'``; ``hᵢ ← hᵢ + Δ``; ``h ← h + Δ̄``             ``h``   12
EControl(η)      ``(g − hᵢ) + η·e``            ``e ← e + g − hᵢ − Δ``; ``hᵢ ← hᵢ + Δ``; ``h ← h + Δ̄``  ``h``   12
===============  ===========================  =====================================================  ======  =========

with ``v' = (1 − β)·vᵢ + β·g``; bytes per element are for fp32 state.
``h`` equals the mean of the workers' ``hᵢ`` (up to rounding) and is the same on
every rank, because every rank adds the same ``Δ̄``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from ..compress.sparse_delta import SparseDelta
from .base import Delta, ErrorFeedback, add_delta_, check_unit_interval

__all__ = ["NoFeedback", "EF14", "EF21", "EF21SGDM", "EControl"]


class NoFeedback(ErrorFeedback):
    """Plain compressed SGD (CGD): send ``C(g)``, step with ``Δ̄``. Stateless; the baseline that can diverge."""

    name = "none"
    buffers = ()
    sparse_deltas = True

    def _message(self, s: dict[str, Tensor], g: Tensor) -> Tensor:
        return g.clone()

    def _commit(self, s: dict[str, Tensor], g: Tensor, dl: Delta, dm: Delta) -> Tensor | SparseDelta:
        return dm


class EF14(ErrorFeedback):
    """Classic error feedback (Seide et al., Interspeech 2014; Stich, Cordonnier, Jaggi, NeurIPS 2018).

    State ``eᵢ`` (starts at 0). Step: ``u = e + g``; send ``Δ = C(u)``;
    ``e ← e + g − Δ``; output ``Δ̄``. The virtual iterate ``x − γ·ē`` follows
    SGD exactly. With heterogeneous workers and a constant step it stalls at an
    error floor that scales with ``γ``.
    """

    name = "ef14"
    buffers = ("e",)
    sparse_deltas = True
    scratch = True

    def _message(self, s: dict[str, Tensor], g: Tensor) -> Tensor:
        return torch.add(s["e"], g, out=s["scratch"])

    def _commit(self, s: dict[str, Tensor], g: Tensor, dl: Delta, dm: Delta) -> Tensor | SparseDelta:
        u = s.get("message")
        if u is not None:  # u = e + g, intact: e' = u − Δ in u's own buffer, no pass over e and g
            s["e"] = add_delta_(u, dl, alpha=-1.0)
        else:
            add_delta_(s["e"].add_(g), dl, alpha=-1.0)
        return dm


class EF21(ErrorFeedback):
    """EF21 (Richtárik, Sokolov, Fatkhullin, NeurIPS 2021).

    State ``hᵢ`` (local estimate) and ``h`` (global estimate, the mean of the
    ``hᵢ``), both 0 or set by :meth:`warm_start`. Step: ``u = g − hᵢ``; send
    ``Δ = C(u)``; ``hᵢ ← hᵢ + Δ``; ``h ← h + Δ̄``; output ``h``.
    """

    name = "ef21"
    buffers = ("h_local", "h")
    sparse_deltas = True
    scratch = True

    def _message(self, s: dict[str, Tensor], g: Tensor) -> Tensor:
        return torch.sub(g, s["h_local"], out=s["scratch"])

    def _commit(self, s: dict[str, Tensor], g: Tensor, dl: Delta, dm: Delta) -> Tensor:
        add_delta_(s["h_local"], dl)
        add_delta_(s["h"], dm)
        return s["h"]


class EF21SGDM(ErrorFeedback):
    """EF21 with worker-side momentum (Fatkhullin, Tyurin, Richtárik, NeurIPS 2023, "EF21-SGDM").

    The paper calls the momentum parameter η; here it is ``beta`` in (0, 1]
    (``beta = 1`` is EF21). State ``vᵢ``, ``hᵢ``, ``h``. Step:
    ``v' = (1 − β)·vᵢ + β·g``; ``u = v' − hᵢ``; send ``Δ = C(u)``; ``vᵢ ← v'``;
    ``hᵢ ← hᵢ + Δ``; ``h ← h + Δ̄``; output ``h``.
    """

    name = "ef21_sgdm"
    buffers = ("v", "h_local", "h")
    sparse_deltas = True
    scratch = True

    def __init__(self, beta: float = 0.1, dtype: torch.dtype = torch.float32) -> None:
        self.beta = check_unit_interval(beta, "EF21SGDM beta", low_open=True)
        super().__init__(dtype)

    def config(self) -> dict[str, object]:
        return {"name": self.name, "beta": self.beta}

    def _message(self, s: dict[str, Tensor], g: Tensor) -> Tensor:
        return torch.mul(s["v"], 1.0 - self.beta, out=s["scratch"]).add_(g, alpha=self.beta).sub_(s["h_local"])

    def _commit(self, s: dict[str, Tensor], g: Tensor, dl: Delta, dm: Delta) -> Tensor:
        s["v"].mul_(1.0 - self.beta).add_(g, alpha=self.beta)  # v' as in the message, now kept
        add_delta_(s["h_local"], dl)
        add_delta_(s["h"], dm)
        return s["h"]


class EControl(ErrorFeedback):
    """EControl (Gao, Islamov, Stich, "EControl: Fast Distributed Optimization with Compression and Error
    Control", ICLR 2024).

    State ``eᵢ`` (error), ``hᵢ`` (local estimate), ``h`` (global estimate).
    Step: ``u = (g − hᵢ) + η·e``; send ``Δ = C(u)``; ``e ← e + ((g − hᵢ) − Δ)``;
    ``hᵢ ← hᵢ + Δ``; ``h ← h + Δ̄``; output ``h``. Message and commit are one pass
    each (:func:`commlib.ops.econtrol_message`, and :func:`commlib.ops.econtrol_commit_`
    when ``Δ`` is sparse); every operation rounds once, in the order written.

    Identities (any η, any C): ``eᵢ' + hᵢ' = eᵢ + g``; the virtual iterate
    ``x − γ·ē`` follows SGD exactly; ``η = 0`` is EF21 bit for bit.

    ``eta`` in [0, 1] sets the strength of the error feedback. The theory takes
    ``η = Θ(δ)`` for a δ-contractive compressor; the default 0.005 is ``δ/2`` for
    top-k at density 1% (:func:`~commlib.feedback.default_eta` computes ``δ/2``
    for a given compressor and tensor size). Large η (e.g. 1, or η ≫ δ) makes the
    e/h loop itself unstable and the buffers blow up.
    """

    name = "econtrol"
    buffers = ("e", "h_local", "h")
    sparse_deltas = True
    scratch = True

    def __init__(self, eta: float = 0.005, dtype: torch.dtype = torch.float32) -> None:
        self.eta = check_unit_interval(eta, "EControl eta", low_open=False)
        super().__init__(dtype)

    def config(self) -> dict[str, object]:
        return {"name": self.name, "eta": self.eta}

    def _message(self, s: dict[str, Tensor], g: Tensor) -> Tensor:
        return ops.econtrol_message(g, s["h_local"], s["e"], self.eta, out=s["scratch"])

    def _commit(self, s: dict[str, Tensor], g: Tensor, dl: Delta, dm: Delta) -> Tensor:
        if isinstance(dl, SparseDelta):  # one pass over e, hᵢ and g (commlib.ops.econtrol_commit_)
            ops.econtrol_commit_(s["e"], s["h_local"], g, dl.indices, dl.values.to(s["e"].dtype))
        else:
            s["e"].add_(add_delta_(torch.sub(g, s["h_local"], out=s["scratch"]), dl, alpha=-1.0))
            add_delta_(s["h_local"], dl)
        add_delta_(s["h"], dm)
        return s["h"]
