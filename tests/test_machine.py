"""The machine description bench results and the study report record, and what it decides."""

import platform

import pytest

from stages.lib import machine
from stages.lib.machine import describe, has_bfloat16, processor_name, vector_extensions
from stages.lib.models import resolve_precision


def test_the_processor_model_and_vector_extensions_come_from_cpuinfo_where_linux_gives_it(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
                       "flags\t\t: fpu avx2 sse4_2 avx\n")
    assert processor_name(cpuinfo) == "AMD EPYC 7B13"
    assert vector_extensions(cpuinfo) == ["avx", "avx2"]
    assert processor_name(tmp_path / "missing") in {platform.processor(), platform.machine()}
    assert vector_extensions(tmp_path / "missing") == []


def test_the_description_counts_the_cpus_this_process_may_use():
    machine = describe()
    assert machine["cpus"] >= 1 and machine["processor"] and machine["python"] == platform.python_version()


@pytest.mark.parametrize("flags, native", [("avx2 avx512f", False), ("avx2 avx512f avx512_bf16", True),
                                           ("avx512f amx_tile amx_bf16", True)])
def test_bfloat16_is_native_with_avx512_bf16_or_amx(flags, native, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"model name\t: some CPU\nflags\t\t: fpu sse2 {flags}\n")
    assert has_bfloat16(cpuinfo) is native
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    monkeypatch.setattr("stages.lib.models.has_bfloat16", lambda: has_bfloat16(cpuinfo))
    assert resolve_precision("auto") == ("mixed_bfloat16" if native else "float32")
    assert resolve_precision("float32") == "float32"
