# Container-side: what a toolchain image really has, one key=value a line (images/toolchain.py parses it).
# A missing tool prints an empty value, never fails the probe.
v() { "$@" 2>/dev/null | head -n1; }
echo "gcc=$(v gcc -dumpfullversion)"
echo "gxx=$(v g++ -dumpfullversion)"
echo "python=$(v python3 -c 'import platform; print(platform.python_version())')"
echo "glibc=$(v getconf GNU_LIBC_VERSION | awk '{print $2}')"
echo "cmake=$(v cmake --version | awk '{print $3}')"
echo "ninja=$(v ninja --version)"
echo "nvcc=$(v sh -c "nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'")"
echo "ccache=$(v ccache --version | awk '{print $3}')"
echo "numa_header=$(test -f /usr/include/numa.h && echo yes || echo no)"
echo "tcmalloc=$(ls /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 2>/dev/null | head -n1)"
echo "disk_free_gb=$(df -k --output=avail /work 2>/dev/null | tail -n1 | awk '{printf "%.1f", $1/1048576}')"
echo "mem_gib=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)"
echo "cores=$(nproc)"
echo "os=$(. /etc/os-release && echo "$PRETTY_NAME")"
