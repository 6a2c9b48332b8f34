# Container-side: which hosts ($@) resolve and take a TCP connection on 443 (DNS first);
# prints "host=1" or "host=0", one a line (images/preflight.py reads them).
for h in "$@"; do
    if getent hosts "$h" >/dev/null && timeout 5 bash -c "</dev/tcp/$h/443" 2>/dev/null; then
        echo "$h=1"
    else
        echo "$h=0"
    fi
done
