# Container-side, the build's linkage phase (images/build.py): the shared libraries the built
# extensions link from the distro (not the venv) and the Debian packages that own them; the runtime
# image installs those (e.g. Debian's de-vendored oneDNN links libspdlog).
set -e
find /src/build -name '*.so' -path '*vllm*' | while read -r so; do ldd "$so"; done \
  | awk '/=> \// {print $3}' | grep -v -e '^/opt/venv' -e '/src/' | sort -u > /out/linked-libs.txt
: > /out/runtime-debs.txt
while read -r lib; do dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true; done \
  < /out/linked-libs.txt | cut -d: -f1 | sort -u > /out/runtime-debs.txt
echo "linked from the distro:"; cat /out/linked-libs.txt; echo "owning packages:"; cat /out/runtime-debs.txt
