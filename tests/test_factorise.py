"""Truncated factorisation: the randomized rank-r SVD against the exact one, and the `svd` option."""
import pytest
import torch
from test_transfer import pair, run_export

from paraknow.core.errors import ParaknowError
from paraknow.transfer.lora import factorise, randomized_svd, scaling, svd_method


def decaying(out_dim, in_dim, decay, seed=0):
    """A random [out, in] matrix whose singular values fall as k ** -decay (trained weights decay too)."""
    g = torch.Generator().manual_seed(seed)
    k = min(out_dim, in_dim)
    U = torch.linalg.qr(torch.randn(out_dim, k, generator=g, dtype=torch.float64)).Q  # [o, k]
    V = torch.linalg.qr(torch.randn(in_dim, k, generator=g, dtype=torch.float64)).Q  # [i, k]
    sigma = torch.arange(1, k + 1, dtype=torch.float64) ** -decay
    return ((U * sigma) @ V.T).float(), sigma  # [o, i]


def reconstruction(f, rank, alpha):
    return scaling(rank, alpha) * (f.B.double() @ f.A.double())  # [out, in]


@pytest.mark.parametrize("decay", [0.5, 1.0])
@pytest.mark.parametrize("split", ["left", "sqrt"])
def test_randomized_matches_exact_on_a_decaying_spectrum(decay, split):
    W, sigma = decaying(700, 300, decay)
    rank, alpha = 16, 32
    exact = factorise(W, rank, alpha, split, svd="exact")
    fast = factorise(W, rank, alpha, split, svd="randomized", seed=3)
    assert (exact.method, fast.method) == ("exact", "randomized")
    W64 = W.double()
    err_exact = torch.linalg.norm(W64 - reconstruction(exact, rank, alpha)) / torch.linalg.norm(W64)
    err_fast = torch.linalg.norm(W64 - reconstruction(fast, rank, alpha)) / torch.linalg.norm(W64)
    # the exact error is the Eckart-Young optimum sqrt(sum of the tail of sigma^2 / total)
    optimum = (sigma[rank:].square().sum() / sigma.square().sum()).sqrt()
    assert float(err_exact) == pytest.approx(float(optimum), rel=1e-5)
    assert err_exact <= err_fast <= 1.01 * err_exact
    expected_energy = float(sigma[:rank].square().sum() / sigma.square().sum())
    assert exact.energy == pytest.approx(expected_energy, abs=1e-6)
    assert fast.energy == pytest.approx(exact.energy, abs=1e-6)
    assert fast.A.shape == (rank, 300) and fast.B.shape == (700, rank)
    assert fast.A.dtype == fast.B.dtype == torch.float32
    torch.testing.assert_close(fast.singular_values, exact.singular_values[:rank], rtol=1e-4, atol=1e-7)
    # orientation: s * B @ A is the best rank-r approximation itself, not its transpose or a scaled copy
    torch.testing.assert_close(reconstruction(fast, rank, alpha), reconstruction(exact, rank, alpha),
                               rtol=0, atol=2e-3 * float(sigma[0]))


def test_randomized_is_deterministic_per_seed():
    W, _ = decaying(400, 200, 0.3)
    first = factorise(W, 8, 16, svd="randomized", seed=5)
    again = factorise(W, 8, 16, svd="randomized", seed=5)
    other = factorise(W, 8, 16, svd="randomized", seed=6)
    assert torch.equal(first.A, again.A) and torch.equal(first.B, again.B) and first.energy == again.energy
    assert not torch.equal(first.A, other.A)  # the seed reaches the random projection


def test_randomized_svd_on_a_flat_spectrum_is_still_near_optimal():
    """Gaussian noise (no decay, the worst case): the rank-r error stays within 1 % of the optimum."""
    W = torch.randn(500, 250, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    U, sigma, Vh = randomized_svd(W, 10, seed=0)
    exact = torch.linalg.svdvals(W)
    err = torch.linalg.norm(W - (U * sigma) @ Vh)
    assert err <= 1.01 * exact[10:].square().sum().sqrt()
    torch.testing.assert_close(U.T @ U, torch.eye(10, dtype=torch.float64))


def test_auto_picks_randomized_only_for_large_blocks():
    assert svd_method((11008, 4096), 16) == "randomized"
    assert svd_method((4096, 11008), 16) == "randomized"
    assert svd_method((2048, 512), 16) == "exact"  # smaller side below the threshold
    assert svd_method((4096, 1024), 512) == "exact"  # rank too high for a projection to pay off
    assert svd_method((11008, 4096), 16, "exact") == "exact"
    assert svd_method((64, 32), 4, "randomized") == "randomized"
    with pytest.raises(ParaknowError, match="unknown svd"):
        svd_method((64, 32), 4, "fast")


def test_export_records_the_svd(tmp_path, tokenizer, seed_records):
    teacher, student = pair()
    _, _, exact, _ = run_export(tmp_path / "a", teacher, student, tokenizer, seed_records, svd="exact")
    _, _, fast, _ = run_export(tmp_path / "b", teacher, student, tokenizer, seed_records, svd="randomized")
    assert (exact["svd"], fast["svd"]) == ("exact", "randomized")
    assert {m["svd"] for m in fast["modules"].values()} == {"randomized"}
    assert {m["svd"] for m in exact["modules"].values()} == {"exact"}
    for name, module in fast["modules"].items():  # random tiny weights: near-flat spectra, still close
        assert module["energy"] <= exact["modules"][name]["energy"] + 1e-6
        assert module["energy"] == pytest.approx(exact["modules"][name]["energy"], rel=0.02)
    with pytest.raises(ParaknowError, match="unknown svd"):
        run_export(tmp_path / "c", teacher, student, tokenizer, seed_records, svd="fast")


def test_extract_command_takes_svd(tmp_path, saved_pair):
    import json

    from paraknow.cli import main

    out = tmp_path / "export"
    code = main(["extract", "--teacher", saved_pair["teacher"], "--student", saved_pair["student"],
                 "--data", saved_pair["data"], "--out", str(out), "--samples", "3", "--max-length", "64",
                 "--rank", "4", "--svd", "randomized", "--device", "cpu"])
    assert code == 0
    manifest = json.loads((out / "paraknow.json").read_text())
    assert manifest["svd"] == "randomized" and {m["svd"] for m in manifest["modules"].values()} == {"randomized"}


def test_to_host_float32_copies_values_exactly():
    """The last step of a sensitivity pass: float32 host tensors, equal to a plain conversion."""
    from paraknow.core.numerics import to_host_float32

    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.rand(7, 5, generator=gen), "b": torch.rand(11, generator=gen).to(torch.bfloat16)}
    host = to_host_float32(tensors)
    assert host["a"] is tensors["a"]  # already a float32 host tensor: no copy
    assert host["b"].dtype == torch.float32 and torch.equal(host["b"], tensors["b"].float())
    if torch.cuda.is_available():  # the staged path (GPU machines only); several slices of the buffer
        import paraknow.core.numerics as numerics

        big = torch.rand(3, 1000, generator=gen)
        numerics.STAGING_BYTES, saved = 4 * 256, numerics.STAGING_BYTES
        try:
            moved = to_host_float32({"big": big.cuda().to(torch.bfloat16)})["big"]
        finally:
            numerics.STAGING_BYTES = saved
        assert moved.device.type == "cpu" and torch.equal(moved, big.to(torch.bfloat16).float())
