# Container-side, the build's deps phase on Fedora (images/build.py): each offline input's source RPM,
# unpacked under /deps. One that cannot be had is reported, not fatal.
# usage: deps-fedora.sh NAME PKG [NAME PKG ...]; prints offline-input NAME DIR | offline-input-missing NAME
while [ $# -ge 2 ]; do
    name=$1 pkg=$2
    shift 2
    (cd /deps && dnf download --source "$pkg" && rpm2cpio "$pkg"-*.src.rpm | cpio -idm \
        && echo "offline-input $name $(ls -d /deps/"$pkg"-*/ | head -n1)") || echo "offline-input-missing $name"
done
