#!/bin/bash
# C7's "same image without the tcmalloc preload" (capacity runner): the image's entrypoint has run (it may
# add the preload itself); drop every LD_PRELOAD entry whose file name names tcmalloc, then exec the server.
IFS=:
keep=()
for p in $LD_PRELOAD; do
    [[ ${p##*/} == *tcmalloc* ]] || keep+=("$p")
done
export LD_PRELOAD="${keep[*]}"
unset IFS
exec "$@"
