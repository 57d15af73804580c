// The input stage of every plan: gather a batch from a source of images (the whole dataset in
// device memory, or the batch just uploaded) through an index list, convert it to float, normalise
// it per channel and, when training, augment it, all in one pass.
//
// One launch gathers a batch's images and, with TARGETS, its targets: a launch fewer a step, where a
// launch may cost tens of microseconds (PoCL on a 16-core Xeon: 54-68 us for an empty kernel). The
// helpers are gather.h's.

#include "gather.h"

// Work-items 0 .. rows * C * H - 1 gather the images' rows (gather_image_row); with TARGETS the next
// rows * width gather target_out[b, j] = target_src[order[start + b], j] for rows b < n_valid
// (width values a row), zeros after.
__kernel void gather_batch(const int rows, GATHER_ARGS, __global float* restrict out, const int outo TARGET_ARGS)
{
    const int r = get_global_id(0), image_rows = rows * C * H;
    if (r < image_rows) {
        gather_image_row(r, n_valid, start, C, H, W, scale, crop, flip, seed_lo, seed_hi, step, first_row,
                         order + oo, src + so, norm + no, out + outo);
        return;
    }
#if TARGETS
    const int i = r - image_rows;
    if (i >= rows * width) return;
    GATHER_TARGET(i / width, i % width)
#endif
}
