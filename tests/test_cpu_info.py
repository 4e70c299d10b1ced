"""CPU probe: levels match what the kernel reports in /proc/cpuinfo; KT_MOE_ISA and set_isa force
a lower level and refuse unknown or unsupported ones."""

import pytest

import kt_moe

LEVELS = ["generic", "avx2", "avx512", "avx512_bf16", "amx"]


def proc_cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_levels_match_proc_cpuinfo():
    info = kt_moe.cpu_info()
    flags = proc_cpu_flags()
    assert info["levels"] == LEVELS[: len(info["levels"])]
    assert info["best"] == info["levels"][-1]
    has_avx2 = {"avx2", "fma", "f16c"} <= flags
    assert ("avx2" in info["levels"]) == has_avx2
    has_avx512 = has_avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    assert ("avx512" in info["levels"]) == has_avx512
    assert ("avx512_bf16" in info["levels"]) == (has_avx512 and {"avx512_bf16", "avx512_vnni"} <= flags)
    amx = {"amx_tile", "amx_bf16", "amx_int8"} <= flags
    assert ("amx" in info["levels"]) == (amx and "avx512_bf16" in info["levels"])
    for flag in ("avx2", "fma", "f16c", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"):
        assert info["features"][flag] == (flag in flags), flag


def test_active_level_defaults_to_best(run_python):
    out = run_python("-c", "import kt_moe; i = kt_moe.cpu_info(); print(i['active'], i['best'])",
                     env={"KT_MOE_ISA": ""})
    assert out.returncode == 0, out.stderr
    active, best = out.stdout.split()
    assert active == best


def test_selectable_levels_add_emulated_amx():
    info = kt_moe.cpu_info()
    assert info["selectable"] == info["levels"] + ["amx_emulated"]


@pytest.mark.parametrize("level", LEVELS + ["amx_emulated"])
def test_env_forces_each_available_level(level, run_python):
    available = kt_moe.cpu_info()["selectable"]
    out = run_python("-c", "import kt_moe; print(kt_moe.cpu_info()['active'])", env={"KT_MOE_ISA": level})
    if level in available:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == level
    else:
        assert out.returncode != 0
        assert f"asks for ISA level '{level}', but this CPU offers only" in out.stderr


def test_env_unknown_level_is_a_clear_error_and_import_still_works(run_python):
    code = ("import kt_moe\n"
            "try:\n    kt_moe.cpu_info()\nexcept ValueError as e:\n    print('ERR', e)\n")
    out = run_python("-c", code, env={"KT_MOE_ISA": "sse9"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERR KT_MOE_ISA: unknown ISA level 'sse9'")


def test_set_isa_forces_and_restores():
    best = kt_moe.cpu_info()["best"]
    try:
        kt_moe.set_isa("generic")
        assert kt_moe.cpu_info()["active"] == "generic"
        with pytest.raises(ValueError, match="unknown ISA level 'fast'"):
            kt_moe.set_isa("fast")
        for level in LEVELS[LEVELS.index(best) + 1:]:
            with pytest.raises(ValueError, match="this CPU offers only"):
                kt_moe.set_isa(level)
    finally:
        kt_moe.set_isa(best)
    assert kt_moe.cpu_info()["active"] == best
