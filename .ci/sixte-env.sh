# Sourced by .ci/run: makes a prebuilt SIXTE beside the checkout (../shared/sixte, see its README) usable
# by the tests of the SIXTE backend. Without it they skip, saying why.
#  - sources its env.sh (SIXTE, SIMPUT, PATH, LD_LIBRARY_PATH, a private PFILES);
#  - a copied installation whose library symbolic links became small files naming their targets gets real
#    links in a private folder, first on LD_LIBRARY_PATH;
#  - SIXTE finds its templates under the data folder compiled in at installation (--prefix); when that
#    folder is missing and can be created, it is linked to the installation.
_ci_sixte="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/shared/sixte"
if [ -z "${SIXTE:-}" ] && [ -f "$_ci_sixte/env.sh" ]; then
    . "$_ci_sixte/env.sh"
fi
if [ -n "${SIXTE:-}" ] && [ -d "$SIXTE/lib" ]; then
    _ci_links="${TMPDIR:-/tmp}/sixte-lib-links-$(id -u)"
    mkdir -p "$_ci_links"
    for _f in "$SIXTE"/lib/*; do
        if [ -f "$_f" ] && [ ! -L "$_f" ] && [ "$(stat -c %s "$_f")" -lt 128 ]; then
            _target="$(head -c 127 "$_f")"
            if [ -f "$SIXTE/lib/$_target" ]; then ln -sfn "$SIXTE/lib/$_target" "$_ci_links/$(basename "$_f")"; fi
        fi
    done
    export LD_LIBRARY_PATH="$_ci_links${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    _data="$(cat "$SIXTE"/lib/libsixt.so.*.*.* 2>/dev/null | grep -aoE '/[[:alnum:]/._+-]*/share/sixte' | head -n1 || true)"
    if [ -n "$_data" ] && [ ! -e "$_data" ] && [ -d "$SIXTE/share/sixte" ]; then
        _prefix="${_data%/share/sixte}"
        { mkdir -p "$(dirname "$_prefix")" && ln -sfn "$SIXTE" "$_prefix"; } 2>/dev/null || true
    fi
fi
unset _ci_sixte _ci_links _f _target _data _prefix || true
