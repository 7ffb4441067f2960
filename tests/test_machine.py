"""The machine description bench results and the study report record."""

import platform

from stages.lib.machine import describe, processor_name, vector_extensions


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
