"""The bench records name the CPU they ran on (model and vector ISA)."""

from jaxlm.utils.bench import cpu_model, machine_info


def test_cpu_model_reads_the_first_model_name_and_the_isa_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n"
                    "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni\n\n"
                    "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    got = cpu_model(info)
    assert got["cpu_model"] == "Test CPU 9000"
    assert got["cpu_isa"] == ["avx", "avx2", "fma", "avx512f", "avx512_vnni"]
    assert cpu_model(tmp_path / "missing") == {}


def test_machine_info_carries_the_cpu_fields_when_the_file_exists():
    info = machine_info()
    assert info["cpu_count"] >= 1
    assert set(cpu_model()) <= set(info)
