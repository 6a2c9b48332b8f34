# Container-side, the build's deps phase on Debian (images/build.py): each offline input's source
# package, nearest first to the version the engine asks (pick_source.py), with its build deps.
# One that cannot be had is reported, not fatal: the build then meets the engine's own fetch.
# usage: deps-debian.sh MIRROR "SUITE..." NAME PKG ASKED [NAME PKG ASKED ...]
# prints: offline-input NAME DIR | offline-input-missing NAME | offline-input-candidate-failed NAME VERSION
mirror=$1 suites=$2
shift 2
for s in $suites; do echo "deb-src $mirror $s main"; done > /etc/apt/sources.list.d/deploylab-sources.list
apt-get update -q -o Acquire::Check-Valid-Until=false
while [ $# -ge 3 ]; do
    name=$1 pkg=$2 asked=$3
    shift 3
    got=''
    # Debian's sources are de-vendored (+ds): they build against system libraries (spdlog, ...).
    for v in $(python3 /deploylab/pick_source.py "$pkg" "$asked"); do
        d=/deps/$pkg-${v%-*}; d=${d/*:/}
        if [ -d "$d" ] || (cd /deps && apt-get source -q "$pkg=$v"); then
            (cd /deps && apt-get build-dep -y -q --no-install-recommends "./${pkg}_${v#*:}.dsc") && got=$d && break
        fi
        echo "offline-input-candidate-failed $name $v"
    done
    if [ -n "$got" ]; then echo "offline-input $name $got"; else echo "offline-input-missing $name"; fi
done
