"""The normal-equation solver of `Packed.relax_intensity` against a dense solve."""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.track.energy import _Normal


def _chain_terms(
    rng: np.random.Generator, nf: int, far_pairs: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Residual terms like relax_intensity's: steps and triples along the index (the band),
    and `far_pairs` couplings between distant points (superposed blobs), with a frozen point
    (index -1 after `idx`) in some of them."""
    i = np.arange(nf - 2)
    terms = [
        (np.column_stack([i, i + 1]), np.tile([-1.0, 1.0], (i.size, 1))),
        (np.column_stack([i, i + 1, i + 2]), np.tile([1.0, -2.0, 1.0], (i.size, 1))),
    ]
    a = rng.integers(0, nf, far_pairs)
    b = (a + rng.integers(5, nf - 5, far_pairs)) % nf
    terms.append((np.column_stack([a, b]), rng.uniform(0.2, 1.0, (far_pairs, 2))))
    terms.append((np.column_stack([np.arange(3), np.full(3, nf)]), np.ones((3, 2))))  # frozen
    return [
        (pts, coef, rng.normal(size=len(pts)), rng.uniform(0.1, 2.0, len(pts)))
        for pts, coef in terms
    ]


def _dense(idx, u, prior, terms):  # type: ignore[no-untyped-def]
    nf = int((idx >= 0).sum())
    h, rhs = prior * np.eye(nf), prior * u[idx >= 0]
    for pts, coef, lin, w in terms:
        fi = idx[pts]
        for n in range(len(pts)):
            free = fi[n] >= 0
            beta = lin[n] - (coef[n] * u[pts[n]] * free).sum()
            for j in np.flatnonzero(free):
                rhs[fi[n, j]] -= 2.0 * w[n] * beta * coef[n, j]
                for k in np.flatnonzero(free):
                    h[fi[n, j], fi[n, k]] += 2.0 * w[n] * coef[n, j] * coef[n, k]
    return np.linalg.solve(h, rhs)


@pytest.mark.parametrize("far_pairs", [0, 6, 150])  # band only, Woodbury, sparse LU
def test_solve_equals_a_dense_solve(far_pairs: int) -> None:
    rng = np.random.default_rng(far_pairs)
    nf = 160
    idx = np.append(np.arange(nf), -1)  # the last point is frozen
    u = rng.normal(size=nf + 1)
    terms = _chain_terms(rng, nf, far_pairs)
    quad = _Normal(idx, 1e-3)
    for _ in range(2):  # the second iteration reuses the first one's pattern
        quad.start(u)
        for pts, coef, lin, w in terms:
            quad(pts, coef, lin, w)
        got = quad.solve()
        want = _dense(idx, u, 1e-3, terms)
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
        u = u.copy()
        u[:nf] = got
        terms = [(p, c * 1.1, lin, w * 0.9) for p, c, lin, w in terms]  # new coefficients
