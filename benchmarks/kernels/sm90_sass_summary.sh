#!/bin/bash
# Per-kernel instruction counts of the sm90 objects of a build (cuobjdump on the GPU machine: the
# Debian machine's CUDA has no cuobjdump): HGMMA (wgmma), UTMALDG / UTMASTG (TMA load / store),
# USETMAXREG (setmaxnreg) and local-memory instructions (spills), one line per kernel.
#   benchmarks/kernels/sm90_sass_summary.sh BUILD_DIR > sass.txt
build=${1:?build directory}
echo "tu kernel HGMMA UTMALDG UTMASTG USETMAXREG local"
for o in "$build"/kernels/cuda/CMakeFiles/flashkv_kernels_sm90.dir/generated/*.cu.o; do
  cuobjdump -sass "$o" 2>/dev/null | awk -v tu="$(basename "$o" .cu.o)" '
    /Function :/ { if (name) print tu, name, h, l, s, r, m; name = $3; h = l = s = r = m = 0 }
    /HGMMA/ { h++ } /UTMALDG/ { l++ } /UTMASTG/ { s++ } /USETMAXREG/ { r++ } / (LDL|STL)/ { m++ }
    END { if (name) print tu, name, h, l, s, r, m }'
done
