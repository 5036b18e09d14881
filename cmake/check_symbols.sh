#!/usr/bin/env bash
# check_symbols.sh LIBRARY [SONAME]
# Fails unless every defined dynamic symbol of LIBRARY starts with asock_
# and (when SONAME is given) the library's DT_SONAME is SONAME.
set -euo pipefail

lib=${1:?usage: check_symbols.sh LIBRARY [SONAME]}
want_soname=${2:-}
NM=${NM:-nm}
READELF=${READELF:-readelf}

[[ -f $lib ]] || { echo "check_symbols: $lib: no such file" >&2; exit 1; }

symbols=$("$NM" -D --defined-only "$lib" | awk 'NF >= 3 { print $3 }')
count=$(printf '%s\n' "$symbols" | grep -c . || true)
if [[ $count -eq 0 ]]; then
    echo "check_symbols: $lib exports no symbols at all" >&2
    exit 1
fi
bad=$(printf '%s\n' "$symbols" | grep -v '^asock_' | grep . || true)
if [[ -n $bad ]]; then
    echo "check_symbols: $lib exports symbols outside the asock_ namespace:" >&2
    printf '%s\n' "$bad" | sed 's/^/  /' >&2
    exit 1
fi
echo "check_symbols: $count defined dynamic symbols, all asock_*"

if [[ -n $want_soname ]]; then
    soname=$(LC_ALL=C "$READELF" -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
    if [[ $soname != "$want_soname" ]]; then
        echo "check_symbols: SONAME of $lib is '${soname:-<none>}', want '$want_soname'" >&2
        exit 1
    fi
    echo "check_symbols: SONAME $soname"
fi
