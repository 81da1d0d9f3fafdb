#!/usr/bin/env bash
# Build bitnet.cpp (microsoft/BitNet + its llama.cpp fork) for I2_S the way its setup_env.py does, for
# scripts/bench_cpu.py --bitnet-cpp BUILD_DIR/bin/llama-bench.
#
#   scripts/build_bitnet_cpp.sh SRC_DIR [BUILD_DIR]        # BUILD_DIR defaults to SRC_DIR/build
#
# SRC_DIR is a microsoft/BitNet checkout with 3rdparty/llama.cpp populated, for example laid out from the
# git mirrors by
#
#   scripts/fetch_bitnet_cpp.sh /tmp/bitnet_cpp/src            # BitNet 4645960 + llama.cpp fork 406a5036
#   nice -n 19 scripts/build_bitnet_cpp.sh /tmp/bitnet_cpp/src /tmp/bitnet_cpp/build
#
# or by hand: `git clone --recursive https://github.com/microsoft/BitNet`.
#
# Steps (setup_env.py's gen_code + compile for quant type i2_s on x86_64 / arm64):
#   1. kernel code generation: setup_env.py always runs utils/codegen_tl2.py (x86_64) or codegen_tl1.py
#      (arm64), which writes include/bitnet-lut-kernels.h and include/kernel_config.ini; src/ggml-bitnet-
#      lut.cpp includes that header unconditionally. Its whole content is guarded by GGML_BITNET_X86_TL2 /
#      GGML_BITNET_ARM_TL1, so for an I2_S build it only has to exist; the shapes are those setup_env.py
#      uses for BitNet-b1.58-2B-4T (the bitnet_b1_58-3B tables). Without Python the preset header of
#      preset_kernels/bitnet_b1_58-3B is copied instead (setup_env.py's --use-pretuned).
#   2. cmake configure with -DBITNET_X86_TL2=OFF (x86_64) / -DBITNET_ARM_TL1=OFF (arm64): the I2_S kernels
#      of src/ggml-bitnet-mad.cpp only, as newer setup_env.py passes for i2_s; Release.
#   3. build llama-bench, llama-cli and llama-quantize.
#
# Environment: CC / CXX (default clang / clang++ as setup_env.py uses when present, else gcc / g++; the
# BitNet tree adds -fpermissive for GCC), JOBS (default: nproc), PYTHON (default python3),
# CMAKE_GENERATOR (default Ninja when ninja is installed). The compiler needs AVX2 (x86_64) for the
# I2_S kernel; GGML_NATIVE stays on, so the binaries are for this CPU.
#
# Writes BUILD_DIR/bitnet_cpp_version.json (source commits, compiler, flags, build seconds) and prints
# the path of the built llama-bench as its last line.
set -euo pipefail

die() { echo "build_bitnet_cpp.sh: $*" >&2; exit 1; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 SRC_DIR [BUILD_DIR]"
[[ -d "$1" ]] || die "SRC_DIR $1 is not a directory (lay it out with scripts/fetch_bitnet_cpp.sh SRC_DIR)"
src=$(cd "$1" && pwd)
build=${2:-$src/build}
mkdir -p "$build"
build=$(cd "$build" && pwd)

[[ -f "$src/setup_env.py" && -f "$src/src/ggml-bitnet-mad.cpp" && -f "$src/CMakeLists.txt" ]] \
    || die "$src is not a microsoft/BitNet checkout (no setup_env.py / src/ggml-bitnet-mad.cpp)"
[[ -f "$src/3rdparty/llama.cpp/CMakeLists.txt" ]] \
    || die "$src/3rdparty/llama.cpp is empty: run 'git submodule update --init --recursive' in $src, or lay the tree out with scripts/fetch_bitnet_cpp.sh"
command -v cmake >/dev/null || die "cmake is not installed (setup_env.py needs it too)"

case "$(uname -m)" in
    x86_64 | AMD64 | x86) arch=x86_64 ;;
    aarch64 | arm64 | ARM64) arch=arm64 ;;
    *) die "unsupported machine $(uname -m) (bitnet.cpp builds for x86_64 and arm64)" ;;
esac

if [[ -z "${CC:-}" ]]; then
    if command -v clang >/dev/null && command -v clang++ >/dev/null; then CC=clang CXX=clang++
    else CC=gcc CXX=g++; fi
fi
CXX=${CXX:-g++}
command -v "$CC" >/dev/null || die "C compiler $CC not found"
command -v "$CXX" >/dev/null || die "C++ compiler $CXX not found"
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
python=${PYTHON:-python3}
generator=()
if [[ -n "${CMAKE_GENERATOR:-}" ]]; then generator=(-G "$CMAKE_GENERATOR")
elif command -v ninja >/dev/null; then generator=(-G Ninja); fi

t0=$(date +%s)

# 1. kernel header (setup_env.py gen_code)
if [[ $arch == x86_64 ]]; then
    codegen=(utils/codegen_tl2.py --model bitnet_b1_58-3B --BM 160,320,320 --BK 96,96,96 --bm 32,32,32)
    preset=bitnet-lut-kernels-tl2.h preset_ini=kernel_config_tl2.ini tl_flag=-DBITNET_X86_TL2=OFF
else
    codegen=(utils/codegen_tl1.py --model bitnet_b1_58-3B --BM 160,320,320 --BK 64,128,64 --bm 32,64,32)
    preset=bitnet-lut-kernels-tl1.h preset_ini=kernel_config_tl1.ini tl_flag=-DBITNET_ARM_TL1=OFF
fi
if command -v "$python" >/dev/null && [[ -f "$src/${codegen[0]}" ]]; then
    echo "== codegen: $python ${codegen[*]}"
    (cd "$src" && "$python" "${codegen[@]}") || die "kernel code generation failed (${codegen[0]})"
elif [[ -f "$src/preset_kernels/bitnet_b1_58-3B/$preset" ]]; then
    echo "== codegen: $python not found, copying preset_kernels/bitnet_b1_58-3B/$preset"
    cp "$src/preset_kernels/bitnet_b1_58-3B/$preset" "$src/include/bitnet-lut-kernels.h"
    cp "$src/preset_kernels/bitnet_b1_58-3B/$preset_ini" "$src/include/kernel_config.ini"
else
    die "cannot produce include/bitnet-lut-kernels.h: no $python and no preset kernels in $src"
fi
[[ -f "$src/include/bitnet-lut-kernels.h" ]] || die "codegen did not write $src/include/bitnet-lut-kernels.h"

# 2. configure (setup_env.py compile)
echo "== cmake configure: $build ($CC / $CXX, $tl_flag)"
cmake -S "$src" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER="$CC" -DCMAKE_CXX_COMPILER="$CXX" "$tl_flag" \
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
    || die "cmake configure failed (see the output above)"

# 3. build
echo "== cmake build: llama-bench llama-cli llama-quantize (-j$jobs)"
cmake --build "$build" --config Release -j "$jobs" --target llama-bench llama-cli llama-quantize \
    || die "build failed (see the output above)"
bench=$build/bin/llama-bench
[[ -x "$bench" ]] || die "the build finished but $bench is missing"
seconds=$(( $(date +%s) - t0 ))

# version record for scripts/bench_cpu.py
bitnet_commit=null llama_commit=null
if [[ -f "$src/bitnet_cpp_source.json" ]]; then
    source_json=$(cat "$src/bitnet_cpp_source.json")
else
    b=$(git -C "$src" rev-parse HEAD 2>/dev/null || true)
    l=$(git -C "$src/3rdparty/llama.cpp" rev-parse HEAD 2>/dev/null || true)
    [[ -n "$b" ]] && bitnet_commit="\"$b\""
    [[ -n "$l" ]] && llama_commit="\"$l\""
    source_json="{\"bitnet_repo\": \"microsoft/BitNet\", \"bitnet_commit\": $bitnet_commit, \"llama_cpp_commit\": $llama_commit}"
fi
cc_version=$("$CXX" --version | head -n 1 | sed 's/"/\\"/g')
cat > "$build/bitnet_cpp_version.json" <<EOF
{
  "source": $source_json,
  "source_dir": "$src",
  "arch": "$arch",
  "quant_type": "i2_s",
  "cmake_flags": ["-DCMAKE_BUILD_TYPE=Release", "$tl_flag", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_EXAMPLES=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
  "codegen": "${codegen[*]}",
  "compiler": "$cc_version",
  "jobs": $jobs,
  "build_seconds": $seconds,
  "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
echo "== built in ${seconds}s; version record: $build/bitnet_cpp_version.json"
echo "$bench"
