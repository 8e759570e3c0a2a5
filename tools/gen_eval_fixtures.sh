#!/usr/bin/env bash
# Regenerates tests/fixtures/eval/: synthetic prediction/ground-truth pairs and the metrics that the
# public Inf-Net MATLAB EvaluationTool (EvaluationTool/*.m at HEAD of DengPingFan/Inf-Net) computes
# for them under GNU Octave. The tool's .m files are extracted into a temporary directory at run time
# and never committed; its unmodified main.m is run once per image (the saved curves of a one-image
# run are that image's scores) and once over all images.
#
# Needs: octave-cli with the image package (Debian: apt-get install octave octave-image).
# Usage: tools/gen_eval_fixtures.sh [REPO]   (REPO: a clone of DengPingFan/Inf-Net; default the mirror)
#
# Where Octave's behaviour differs from MATLAB's, this script supplies MATLAB's, on the path ahead of
# Octave's own functions:
#   mapminmax  not in Octave (MATLAB's Deep Learning Toolbox): y = (x − xmin)·gain + ymin with
#              gain = (ymax − ymin)/(xmax − xmin); a row with xmax == xmin (or a gain over 1e14) gets
#              gain 1 and offset ymin, so it passes through unchanged.
#   imresize   Octave's image package resizes columns first, accumulates in single precision and does
#              not renormalise the kernel weights. MATLAB's documented default for imresize(A, [M N]):
#              bicubic (Keys, a = −0.5), antialiasing when shrinking (kernel stretched by 1/scale),
#              output of A's class; MATLAB resizes the dimension with the smaller scale first and
#              rounds to A's class after each pass, with weights normalised to sum 1 and symmetric
#              border padding. Octave's own result is saved next to it (resize/*.octave.png) so the
#              difference can be checked.
#   1:-1/255:0 MATLAB's colon operator computes the first half of a range as start + k·step and the
#              second half as end − k·step; Octave uses start + k·step throughout. The two differ by
#              an ulp at some thresholds, and the tool compares pixels to thresholds with >=, so the
#              temporary copy of main.m gets `Thresholds = matlab_colon(1, -1/255, 0);` instead.
set -euo pipefail

repo=${1:-${INFNET_PUBLIC_REPO:-/work/.mirror/DengPingFan+Inf-Net/repo}}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/tests/fixtures/eval
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if git --git-dir "$repo" rev-parse --git-dir >/dev/null 2>&1; then gitdir=$repo; else gitdir=$(git -C "$repo" rev-parse --absolute-git-dir); fi
mkdir -p "$work/tool"
git --git-dir "$gitdir" archive --format=tar HEAD EvaluationTool | tar -x -C "$work/tool"
tool=$work/tool/EvaluationTool
grep -q '^Thresholds = 1:-1/255:0;' "$tool/main.m" || { echo "$0: main.m no longer has the expected Thresholds line" >&2; exit 1; }
sed -i 's|^Thresholds = 1:-1/255:0;|Thresholds = matlab_colon(1, -1/255, 0);|' "$tool/main.m"
# The variant that produced the published table binarised for E-phi with > instead of >= (changed in
# e723632); a second copy of the tool reproduces it.
cp -r "$work/tool" "$work/tool_above"
sed -i 's|Bi_resmap(resmap>=threshold)=1;|Bi_resmap(resmap>threshold)=1;|' "$work/tool_above/EvaluationTool/main.m"
grep -q 'Bi_resmap(resmap>threshold)=1;' "$work/tool_above/EvaluationTool/main.m" || { echo "$0: cannot make the > variant" >&2; exit 1; }

mkdir -p "$work/shim"
cat > "$work/shim/mapminmax.m" <<'M'
function y = mapminmax (x, ymin, ymax)
  % MATLAB's mapminmax(x, ymin, ymax) for row vectors (see tools/gen_eval_fixtures.sh).
  xmin = min (x, [], 2);
  xmax = max (x, [], 2);
  xrange = xmax - xmin;
  gain = (ymax - ymin) ./ xrange;
  offset = xmin;
  fix = abs (gain) > 1e14 | ! isfinite (xrange) | xrange == 0;
  gain(fix) = 1;
  offset(fix) = ymin;
  y = (x - offset) .* gain + ymin;
end
M
cat > "$work/shim/matlab_colon.m" <<'M'
function r = matlab_colon (a, d, b)
  % MATLAB's a:d:b: first half a + k*d, second half counted back from the end (see the script).
  n = floor ((b - a) / d + 1e-10);
  c = b;
  r = zeros (1, n + 1);
  for k = 0:floor (n / 2)
    r(1 + k) = a + k * d;
    r(n + 1 - k) = c - k * d;
  end
  if mod (n, 2) == 0
    r(n / 2 + 1) = (a + c) / 2;
  end
end
M
cat > "$work/shim/imresize.m" <<'M'
function B = imresize (A, out_size)
  % MATLAB's imresize(A, [M N]) default (see tools/gen_eval_fixtures.sh).
  cls = class (A);
  scale = out_size ./ [rows(A), columns(A)];
  if scale(1) <= scale(2)
    order = [1, 2];
  else
    order = [2, 1];
  end
  B = A;
  for dim = order
    B = resize_dim (B, dim, out_size(dim), scale(dim), cls);
  end
end

function w = keys_cubic (x)
  ax = abs (x);
  ax2 = ax .* ax;
  ax3 = ax2 .* ax;
  w = (1.5 * ax3 - 2.5 * ax2 + 1) .* (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) .* (1 < ax & ax <= 2);
end

function out = resize_dim (A, dim, out_len, scale, cls)
  in_len = size (A, dim);
  if scale < 1
    kw = 4 / scale;
    h = @(x) scale * keys_cubic (scale * x);
  else
    kw = 4;
    h = @keys_cubic;
  end
  u = (1:out_len)' / scale + 0.5 * (1 - 1 / scale);
  left = floor (u - kw / 2);
  P = ceil (kw) + 2;
  idx = left + (0:P-1);
  w = h (u - idx);
  w = w ./ sum (w, 2);
  aux = [1:in_len, in_len:-1:1];
  idx = aux(mod (idx - 1, numel (aux)) + 1);
  A = double (A);
  if dim == 1
    out = zeros (out_len, columns (A), size (A, 3));
    for i = 1:out_len
      acc = zeros (1, columns (A), size (A, 3));
      for k = 1:P
        acc = acc + w(i, k) * A(idx(i, k), :, :);
      end
      out(i, :, :) = acc;
    end
  else
    out = zeros (rows (A), out_len, size (A, 3));
    for j = 1:out_len
      acc = zeros (rows (A), 1, size (A, 3));
      for k = 1:P
        acc = acc + w(j, k) * A(:, idx(j, k), :);
      end
      out(:, j, :) = acc;
    end
  end
  out = cast (out, cls);  % integer casts round half away from zero and saturate, as MATLAB's
end
M

# Synthetic cases. GT 48×64 unless stated; predictions are smoothed, shifted, noisy versions of the GT.
# Cases where the tool yields NaN go to nan_cases/ so that the dataset means over pred/ stay finite.
cat > "$work/make_cases.m" <<'M'
function make_cases (dir)
  rand ("state", 20200415); randn ("state", 20200415);
  mkdir ([dir "/pred"]); mkdir ([dir "/gt"]); mkdir ([dir "/nan_cases/pred"]); mkdir ([dir "/nan_cases/gt"]);
  H = 48; W = 64;
  for i = 1:6
    gt = blobs (H, W, 1 + mod (i, 4));
    lo = [0 0 20 5 0 60](i); hi = [255 255 230 250 200 255](i);
    p = smooth_pred (gt, [1.5 3 2 4 1 2.5](i), [0.05 0.2 0.1 0.3 0.02 0.15](i), [0 2 -2 3 1 0](i));
    save_pair (dir, sprintf ("blobs_%02d", i), to_u8 (p, lo, hi), gt);
  end
  save_pair (dir, "gt_empty", to_u8 (smooth_pred (blobs (H, W, 2), 2, 0.2, 0), 0, 255), false (H, W));
  % Every pixel foreground: TN + FP = 0, so the tool's specificity is 0/0 = NaN.
  save_pair ([dir "/nan_cases"], "gt_full", to_u8 (0.6 + 0.4 * rand (H, W), 0, 255), true (H, W));
  save_pair (dir, "pred_constant", uint8 (128 * ones (H, W)), blobs (H, W, 2));
  save_pair (dir, "pred_zero", uint8 (zeros (H, W)), blobs (H, W, 3));
  gt = blobs (H, W, 3); p = gt; flip = rand (H, W) < 0.03; p(flip) = ! p(flip);
  save_pair (dir, "pred_binary", uint8 (255 * p), gt);
  gt = blobs (H, W, 3);
  save_pair (dir, "pred_larger", to_u8 (imresize_nn (smooth_pred (gt, 2, 0.1, 1), [80 100]), 0, 255), gt);
  gt = blobs (H, W, 2);
  save_pair (dir, "pred_smaller", to_u8 (imresize_nn (smooth_pred (gt, 2, 0.1, 0), [30 41]), 0, 255), gt);
  gt = blobs (H, W, 4);
  save_pair (dir, "pred_mixed_size", to_u8 (imresize_nn (smooth_pred (gt, 2, 0.1, -1), [70 40]), 10, 240), gt);
  % Ground truth with intermediate gray levels: only values > 128 are foreground.
  gt = blobs (H, W, 3); levels = uint8 ([0 100 128 129 200 255]);
  g = levels(1 + floor (rand (H, W) * 2)); g(gt) = levels(4 + floor (rand (1, nnz (gt)) * 3));
  g(1:3, 1:3) = 128;
  imwrite (to_u8 (smooth_pred (gt, 2, 0.1, 0), 0, 255), [dir "/pred/gt_gray_levels.png"]);
  imwrite (g, [dir "/gt/gt_gray_levels.png"]);
  % A 1-bit ground truth (read as logical by MATLAB and Octave).
  gt = blobs (H, W, 2);
  imwrite (to_u8 (smooth_pred (gt, 3, 0.2, 1), 0, 255), [dir "/pred/gt_1bit.png"]);
  imwrite (gt, [dir "/gt/gt_1bit.png"]);
  % RGB prediction: the tool scores the first (red) channel only.
  gt = blobs (H, W, 2); r = to_u8 (smooth_pred (gt, 2, 0.1, 0), 0, 255);
  imwrite (cat (3, r, 255 - r, uint8 (rand (H, W) * 255)), [dir "/pred/pred_rgb.png"]);
  imwrite (uint8 (255 * gt), [dir "/gt/pred_rgb.png"]);
  % 16-bit prediction (im2double divides by 65535).
  gt = blobs (H, W, 3); p = smooth_pred (gt, 2, 0.1, 0);
  imwrite (uint16 (round (1000 + 60000 * (p - min (p(:))) / (max (p(:)) - min (p(:))))), [dir "/pred/pred_16bit.png"]);
  imwrite (uint8 (255 * gt), [dir "/gt/pred_16bit.png"]);
  % A lone foreground pixel in the bottom-right corner puts the GT centroid on the last row and
  % column: S_region's right and bottom blocks are empty and the S-measure is NaN.
  gt = false (H, W); gt(H, W) = true;
  imwrite (to_u8 (smooth_pred (blobs (H, W, 2), 2, 0.1, 0), 0, 255), [dir "/nan_cases/pred/corner.png"]);
  imwrite (uint8 (255 * gt), [dir "/nan_cases/gt/corner.png"]);
end

function m = blobs (H, W, k)
  [X, Y] = meshgrid (1:W, 1:H);
  f = zeros (H, W);
  for i = 1:k
    s = 3 + 6 * rand ();
    f = f + exp (-((X - W * rand ()) .^ 2 + (Y - H * rand ()) .^ 2) / (2 * s ^ 2));
  end
  m = f > 0.5;
end

function p = smooth_pred (gt, sigma, noise, shift)
  r = ceil (3 * sigma); [X, Y] = meshgrid (-r:r, -r:r);
  k = exp (-(X .^ 2 + Y .^ 2) / (2 * sigma ^ 2)); k = k / sum (k(:));
  p = conv2 (double (circshift (gt, [shift, -shift])), k, "same") + noise * randn (size (gt));
end

function q = to_u8 (p, lo, hi)
  q = uint8 (lo + (hi - lo) * (p - min (p(:))) / max (max (p(:)) - min (p(:)), eps));
end

function q = imresize_nn (p, sz)
  % Nearest-neighbour resampling just to make a map of another size; the tool's imresize is tested on it.
  r = max (1, min (rows (p), round ((1:sz(1)) * rows (p) / sz(1))));
  c = max (1, min (columns (p), round ((1:sz(2)) * columns (p) / sz(2))));
  q = p(r, c);
end

function save_pair (dir, name, pred, gt)
  imwrite (pred, [dir "/pred/" name ".png"]);
  imwrite (uint8 (255 * gt), [dir "/gt/" name ".png"]);
end
M

# Runs the tool (main.m) on one prediction folder and ground-truth folder; prints the .mat it saved.
run_tool() { # tool_dir pred_dir gt_dir run_dir
    local run=$4
    mkdir -p "$run/Results/Lung infection segmentation/Inf-Net" "$run/Dataset/TestingSet/LungInfection-Test/GT" "$run/EvaluateResults"
    cp "$2"/*.png "$run/Results/Lung infection segmentation/Inf-Net/"
    cp "$3"/*.png "$run/Dataset/TestingSet/LungInfection-Test/GT/"
    cp -r "$1/EvaluationTool" "$run/"
    (cd "$run/EvaluationTool" && octave-cli --no-gui --quiet --eval "pkg load image; addpath('$work/shim'); main" >"$run/log.txt" 2>&1) \
        || { cat "$run/log.txt" >&2; echo "$0: the tool failed in $run" >&2; exit 1; }
    echo "$run/EvaluateResults/LungInfection-Test-1-mat/Inf-Net"
}

cases=$work/cases
mkdir -p "$cases"
octave-cli --no-gui --quiet --eval "pkg load image; addpath('$work'); make_cases('$cases')"
octave-cli --no-gui --quiet --eval "pkg load image; addpath('$work/shim'); assert (strncmp (which ('imresize'), '$work/shim', numel ('$work/shim'))); assert (strncmp (which ('mapminmax'), '$work/shim', numel ('$work/shim')))"

mats=$work/mats.txt
: > "$mats"
for pred in "$cases"/pred/*.png "$cases"/nan_cases/pred/*.png; do
    name=$(basename "$pred" .png)
    one=$work/one/$name
    mkdir -p "$one/pred" "$one/gt"
    cp "$pred" "$one/pred/"
    cp "$(dirname "$(dirname "$pred")")/gt/$name.png" "$one/gt/"
    echo "image $name $(run_tool "$work/tool" "$one/pred" "$one/gt" "$work/run_$name")" >> "$mats"
done
echo "all all $(run_tool "$work/tool" "$cases/pred" "$cases/gt" "$work/run_all")" >> "$mats"
echo "all_above all $(run_tool "$work/tool_above" "$cases/pred" "$cases/gt" "$work/run_all_above")" >> "$mats"

# Resized predictions: the MATLAB-default shim versus Octave's own imresize.
mkdir -p "$cases/resize"
octave-cli --no-gui --quiet --eval "
  pkg load image;
  for c = {'pred_larger', 'pred_smaller', 'pred_mixed_size'}
    p = imread(['$cases/pred/' c{1} '.png']); g = imread(['$cases/gt/' c{1} '.png']);
    imwrite(imresize(p, size(g)), ['$cases/resize/' c{1} '.octave.png']);
  end
  addpath('$work/shim');
  for c = {'pred_larger', 'pred_smaller', 'pred_mixed_size'}
    p = imread(['$cases/pred/' c{1} '.png']); g = imread(['$cases/gt/' c{1} '.png']);
    imwrite(imresize(p, size(g)), ['$cases/resize/' c{1} '.matlab.png']);
  end"

# Collect the saved results into expected.json.
octave-cli --no-gui --quiet --eval "
  fid = fopen('$mats'); lines = {}; while true, l = fgetl(fid); if ! ischar(l), break; end; lines{end+1} = l; end; fclose(fid);
  images = struct('name', {}, 'dice_mean', {}, 'dice_max', {}, 'sensitivity_mean', {}, 'sensitivity_max', {}, ...
                  'specificity_mean', {}, 'specificity_max', {}, 's_measure', {}, 'e_measure_mean', {}, 'e_measure_max', {}, 'mae', {});
  for i = 1:numel(lines)
    parts = strsplit(lines{i}, ' '); kind = parts{1}; name = parts{2}; file = strjoin(parts(3:end), ' ');
    s = load(file);
    r = struct('name', name, 'dice_mean', s.meanDic, 'dice_max', s.maxDic, 'sensitivity_mean', s.meanSen, 'sensitivity_max', s.maxSen, ...
               'specificity_mean', s.meanSpe, 'specificity_max', s.maxSpe, 's_measure', s.Sm, 'e_measure_mean', s.meanEm, 'e_measure_max', s.maxEm, 'mae', s.mae);
    if strcmp(kind, 'image'), images(end+1) = r;
    elseif strcmp(kind, 'all'), all_ = r; curves = struct('dice', s.column_Dic, 'sensitivity', s.column_Sen, 'specificity', s.column_Spe, 'e_measure', s.column_E);
    else all_above = r; end
  end
  doc = struct('generator', 'tools/gen_eval_fixtures.sh', 'octave', version(), 'image_package', pkg('describe', 'image'){1}.version, ...
               'images', images, 'all', all_, 'all_curves', curves, 'all_e_measure_above', all_above);
  fid = fopen('$work/expected.json', 'w'); fputs(fid, jsonencode(doc, 'PrettyPrint', true)); fclose(fid);"

rm -rf "$out"
mkdir -p "$out"
cp -r "$cases/pred" "$cases/gt" "$cases/nan_cases" "$cases/resize" "$out/"
cp "$work/expected.json" "$out/"
echo "wrote $out ($(du -sh "$out" | cut -f1))"
