#!/usr/bin/env bash
# Extracts the COVID-SemiSeg test data and the published Inf-Net prediction maps from a clone of the
# public Inf-Net repository (https://github.com/DengPingFan/Inf-Net), where they live only in history:
#   Dataset/  from the tree of commit a4e95df^ (removed from the repository in a4e95df)
#   Results/  from the tree of commit 8cbf357^ (removed in 8cbf357)
#
# Usage: tools/extract_covid_semiseg.sh DEST [REPO]
#   REPO (or $INFNET_PUBLIC_REPO): a clone or bare clone; default /work/.mirror/DengPingFan+Inf-Net/repo
#   DEST may be ./data (gitignored) or a folder outside the repository.
#
# The dataset is for non-commercial research use only: extract it outside the source tree (or into a
# gitignored folder) and never commit it. Afterwards:
#   INFNET_COVID_SEMISEG=DEST cargo test --test eval_paper -- --nocapture
set -euo pipefail

dest=${1:?usage: $0 DEST [REPO]}
repo=${2:-${INFNET_PUBLIC_REPO:-/work/.mirror/DengPingFan+Inf-Net/repo}}

if git --git-dir "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    gitdir=$repo
elif git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    gitdir=$(git -C "$repo" rev-parse --absolute-git-dir)
else
    echo "$0: $repo: not a git repository (pass a clone of DengPingFan/Inf-Net)" >&2
    exit 1
fi
for rev in 'a4e95df^' '8cbf357^'; do
    git --git-dir "$gitdir" rev-parse --verify --quiet "$rev^{commit}" >/dev/null \
        || { echo "$0: $repo: commit $rev not found (is this a full clone of DengPingFan/Inf-Net?)" >&2; exit 1; }
done

mkdir -p "$dest"
# Only the test split and the doctor-labelled training slices (for their Edge maps): the 4950
# pseudo-labels are not needed by anything here.
git --git-dir "$gitdir" archive --format=tar 'a4e95df^' Dataset/TestingSet Dataset/TrainingSet/LungInfection-Train/Doctor-label \
    | tar -x -C "$dest"
git --git-dir "$gitdir" archive --format=tar '8cbf357^' Results | tar -x -C "$dest"

n_gt=$(find "$dest/Dataset/TestingSet/LungInfection-Test/GT" -name '*.png' | wc -l)
n_pred=$(find "$dest/Results/Lung infection segmentation/Inf-Net" -name '*.png' | wc -l)
echo "extracted to $dest: $n_gt test GT masks, $n_pred Inf-Net prediction maps"
