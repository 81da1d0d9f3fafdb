#!/usr/bin/env bash
# Lay out a bitnet.cpp source tree (microsoft/BitNet with 3rdparty/llama.cpp populated) from two bare git
# mirrors, for scripts/build_bitnet_cpp.sh.
#
#   scripts/fetch_bitnet_cpp.sh DEST
#
# Environment (defaults in brackets):
#   BITNET_MIRROR  bare git dir of microsoft/BitNet        [/work/.mirror/microsoft+BitNet/repo]
#   LLAMA_MIRROR   bare git dir of the llama.cpp fork      [/work/.mirror/Eddie-Wang1120+llama.cpp/repo]
#   BITNET_COMMIT  the BitNet commit to lay out            [4645960add917c8284ad05eebedca31f8848d45d]
#
# The llama.cpp commit is the one BITNET_COMMIT pins as its submodule (read from its tree). The default
# BitNet commit (2024-11-08, main) is the newest main commit whose pinned submodule commit
# (406a5036f9a8aaee9ec5e96e652f61691340fe95, branch merge-dev of Eddie-Wang1120/llama.cpp) the fork
# mirror holds: later BitNet commits pin commits of isHuangXin/llama.cpp, which is not mirrored. It also
# carries the GCC build fixes (BitNet PR #83), so the tree builds with gcc. The fork's own submodule
# (ggml/src/kompute, Vulkan) is not needed for a CPU build and is left empty.
#
# DEST must not exist or be empty. The commits are written to DEST/bitnet_cpp_source.json, which the
# build script copies into its build directory's bitnet_cpp_version.json.
set -euo pipefail

die() { echo "fetch_bitnet_cpp.sh: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 DEST"
dest=$1
bitnet_mirror=${BITNET_MIRROR:-/work/.mirror/microsoft+BitNet/repo}
llama_mirror=${LLAMA_MIRROR:-/work/.mirror/Eddie-Wang1120+llama.cpp/repo}
bitnet_commit=${BITNET_COMMIT:-4645960add917c8284ad05eebedca31f8848d45d}

command -v git >/dev/null || die "git is not installed"
git --git-dir="$bitnet_mirror" rev-parse --git-dir >/dev/null 2>&1 \
    || die "no git repository at BITNET_MIRROR=$bitnet_mirror (fetch github:microsoft/BitNet first)"
git --git-dir="$llama_mirror" rev-parse --git-dir >/dev/null 2>&1 \
    || die "no git repository at LLAMA_MIRROR=$llama_mirror (fetch github:Eddie-Wang1120/llama.cpp first)"
bitnet_sha=$(git --git-dir="$bitnet_mirror" rev-parse --verify -q "$bitnet_commit^{commit}") \
    || die "BitNet commit $bitnet_commit is not in $bitnet_mirror"
llama_sha=$(git --git-dir="$bitnet_mirror" ls-tree "$bitnet_sha" 3rdparty/llama.cpp | awk '$2 == "commit" {print $3}')
[[ -n "$llama_sha" ]] || die "BitNet $bitnet_sha has no 3rdparty/llama.cpp submodule"
git --git-dir="$llama_mirror" cat-file -e "$llama_sha^{commit}" 2>/dev/null \
    || die "BitNet $bitnet_sha pins llama.cpp $llama_sha, which $llama_mirror does not hold; pick another BITNET_COMMIT"

if [[ -e "$dest" && -n "$(ls -A "$dest" 2>/dev/null)" ]]; then
    die "$dest exists and is not empty"
fi
# Extract one commit's tree. A mirror may lack some blobs (the fork's mirror has no models/ggml-vocab-*.gguf
# test vocabularies, which the build does not use): those paths are left out and listed.
extract() {
    local gitdir=$1 sha=$2 into=$3 missing
    missing=$(git --git-dir="$gitdir" ls-tree -r -z "$sha" | tr '\0' '\n' \
        | awk -F'\t' '{split($1, m, " "); if (m[2] == "blob") print m[3] "\t" $2}' \
        | while IFS=$'\t' read -r obj path; do
              git --git-dir="$gitdir" cat-file -e "$obj" 2>/dev/null || printf '%s\n' "$path"
          done)
    local specs=(.)
    if [[ -n "$missing" ]]; then
        echo "fetch_bitnet_cpp.sh: left out (not in $gitdir):" >&2
        while IFS= read -r path; do
            echo "  $path" >&2
            specs+=(":(exclude,literal)$path")
        done <<< "$missing"
    fi
    mkdir -p "$into"
    # git archive still names the excluded missing blobs ("invalid object") but skips them and exits 0
    git --git-dir="$gitdir" archive --format=tar "$sha" -- "${specs[@]}" 2> >(grep -v '^error: invalid object' >&2) \
        | tar -x -C "$into"
}
extract "$bitnet_mirror" "$bitnet_sha" "$dest"
extract "$llama_mirror" "$llama_sha" "$dest/3rdparty/llama.cpp"

date_of() { git --git-dir="$1" log -1 --format=%cI "$2"; }
cat > "$dest/bitnet_cpp_source.json" <<EOF
{
  "bitnet_repo": "microsoft/BitNet",
  "bitnet_commit": "$bitnet_sha",
  "bitnet_commit_date": "$(date_of "$bitnet_mirror" "$bitnet_sha")",
  "llama_cpp_repo": "Eddie-Wang1120/llama.cpp",
  "llama_cpp_commit": "$llama_sha",
  "llama_cpp_commit_date": "$(date_of "$llama_mirror" "$llama_sha")"
}
EOF
echo "bitnet.cpp sources: $dest (BitNet ${bitnet_sha:0:12}, llama.cpp ${llama_sha:0:12})"
