"""The Triton code of the VAE's RGB head (head.py); imported only when it runs (it needs the triton package)."""

import triton
import triton.language as tl


@triton.jit
def conv3_narrow(c_ptr, x_ptr, w_ptr, b_ptr, o_ptr, frames, height, width, channels, outs, BLOCK_M: tl.constexpr,
                 BLOCK_K: tl.constexpr, CHUNKS: tl.constexpr, PRECISION: tl.constexpr):
    # one program: BLOCK_M pixels through every frame (see head.causal_conv3d_narrow). Each input frame is read
    # once for its 9 spatial taps; one tap's [C, 16] weight holds the 3 time taps x 4 outputs, so the product p of a
    # frame serves the 3 output frames that read it: output u adds the dt-th column group of frame u + dt's p.
    pix = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    b = tl.program_id(1).to(tl.int64)
    hw = height * width
    row, col, inside = pix // width, pix % width, pix < hw
    ks, ns = tl.arange(0, BLOCK_K), tl.arange(0, 16)
    group = ns[None, :] // 4  # the time tap of each product column
    older = tl.zeros((BLOCK_M, 16), tl.float32)  # the products of the two frames before
    old = tl.zeros((BLOCK_M, 16), tl.float32)
    bias = tl.load(b_ptr + tl.arange(0, 4), mask=tl.arange(0, 4) < outs, other=0.0).to(tl.float32)
    for tau in range(0, frames + 2):
        if tau < 2:  # the cached frames come first in time
            frame = c_ptr + (b * 2 + tau) * hw * channels
        else:
            frame = x_ptr + (b * frames + tau - 2) * hw * channels
        p = tl.zeros((BLOCK_M, 16), tl.float32)
        for dh in tl.static_range(3):
            for dw in tl.static_range(3):
                r, c = row + dh - 1, col + dw - 1
                m = inside & (r >= 0) & (r < height) & (c >= 0) & (c < width)
                at = (r * width + c).to(tl.int64) * channels
                for kc in tl.static_range(CHUNKS):
                    k = kc * BLOCK_K + ks
                    a = tl.load(frame + at[:, None] + k[None, :], mask=m[:, None] & (k[None, :] < channels), other=0.0)
                    w = tl.load(w_ptr + ((dh * 3 + dw) * channels + k[:, None]) * 16 + ns[None, :],
                                mask=k[:, None] < channels, other=0.0)
                    p = tl.dot(a, w, p, input_precision=PRECISION)
        if tau >= 2:
            taps = tl.where(group == 0, older, 0.0) + tl.where(group == 1, old, 0.0) + tl.where(group == 2, p, 0.0)
            y = tl.sum(tl.reshape(taps, (BLOCK_M, 4, 4)), axis=1) + bias[None, :]  # [BLOCK_M, output]
            o = tl.arange(0, 4)[None, :]
            out = o_ptr + ((b * outs + o) * frames + tau - 2) * hw + pix[:, None]
            tl.store(out, y.to(o_ptr.dtype.element_ty), mask=inside[:, None] & (o < outs))
        older, old = old, p
