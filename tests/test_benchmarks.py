"""`vidgpt-bench NAME [args...]`: the one command that runs every benchmark."""

from __future__ import annotations

import pytest

from vidgpt.benchmarks.__main__ import BENCHMARKS, main


def test_help_lists_every_benchmark_with_its_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vidgpt-bench NAME")
    assert set(BENCHMARKS) == {"kvcache", "train", "attention", "loader", "encode"}
    for name, module in BENCHMARKS.items():
        first_line = module().__doc__.strip().splitlines()[0]
        assert f"  {name}  " in out and first_line in out, name


@pytest.mark.parametrize("name", ["kvcache", "train", "attention", "loader", "encode"])
def test_each_benchmark_has_its_own_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: vidgpt-bench {name} ")


def test_unknown_or_missing_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kv-cache"]) == 2
    err = capsys.readouterr().err
    assert err == "vidgpt-bench: unknown benchmark 'kv-cache'; choose from: kvcache, train, attention, loader, encode\n"
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("usage: vidgpt-bench NAME")
