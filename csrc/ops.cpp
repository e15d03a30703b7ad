// Schemas of the ganplug custom operators. Kernels register per backend in cpu/ and cuda/;
// autograd kernels in autograd.cpp, autocast kernels in autocast.cpp, the generator losses' public
// entries in generator_losses.cpp; fake (meta) kernels register from Python (ganplug/ops/_fake_kernels.py).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(ganplug, m) {
  // y = leaky_relu(input @ weight.T + bias); input (*, K), weight (N, K), bias (N,), y (*, N).
  m.def("linear_leaky_relu(Tensor input, Tensor weight, Tensor? bias, float negative_slope) -> Tensor");
  // dz = dy * (y > 0 ? 1 : slope), the LeakyReLU backward read off the output y.
  m.def("leaky_relu_backward(Tensor grad_output, Tensor output, float negative_slope) -> Tensor");
  // (dz, db): the same plus the bias gradient db = dz.sum(0), fused in one pass; 2-D only.
  m.def("leaky_relu_bias_backward(Tensor grad_output, Tensor output, float negative_slope) -> (Tensor, Tensor)");
  // y = leaky_relu(input + bias over dim 1); input (N, C, *), bias (C,) or None, y shaped like input
  // and laid out like it when it is contiguous or channels-last, else contiguous.
  m.def("bias_leaky_relu(Tensor input, Tensor? bias, float negative_slope) -> Tensor");
  // (dz, db): dz = leaky_relu_backward(dy, y) laid out like y, db (C,) = dz summed over every dim but 1.
  m.def("bias_leaky_relu_backward(Tensor grad_output, Tensor output, float negative_slope) -> (Tensor, Tensor)");
  // y = leaky_relu(input * scale + shift over dim 1); input (N, C, *), scale and shift each None, (C,) or
  // (N, C); y shaped and laid out like bias_leaky_relu's.
  m.def("affine_leaky_relu(Tensor input, Tensor? scale, Tensor? shift, float negative_slope) -> Tensor");
  // (dx, d scale, d shift) from the input (the mask is the sign of input * scale + shift): dx = g * scale
  // laid out like y, with g = dy * mask; d scale = sum(g * input), d shift = sum(g), each shaped like its
  // coefficient ((0,) where it is None).
  m.def("affine_leaky_relu_backward(Tensor grad_output, Tensor input, Tensor? scale, Tensor? shift, float negative_slope) -> (Tensor, Tensor, Tensor)");
  // (y, mean, var): y = leaky_relu((input - mean) / sqrt(var + eps) * weight + bias) with the batch statistics of
  // input (N, C, *) per channel (mean and biased var (C,), float32, float64 for float64 input); weight and bias
  // each None, (C,) or (N, C) (conditional BatchNorm); y laid out as bias_leaky_relu lays it out.
  m.def("batch_norm_leaky_relu(Tensor input, Tensor? weight, Tensor? bias, float eps, float negative_slope) -> (Tensor, Tensor, Tensor)");
  // (dx, d weight, d bias) from the input and the statistics the forward returned (the mask recomputed).
  m.def("batch_norm_leaky_relu_backward(Tensor grad_output, Tensor input, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, float eps, float negative_slope) -> (Tensor, Tensor, Tensor)");
  // The same with the statistics per sample and group of C / num_groups channels: mean and var (N, num_groups).
  m.def("group_norm_leaky_relu(Tensor input, int num_groups, Tensor? weight, Tensor? bias, float eps, float negative_slope) -> (Tensor, Tensor, Tensor)");
  m.def("group_norm_leaky_relu_backward(Tensor grad_output, Tensor input, Tensor mean, Tensor var, int num_groups, Tensor? weight, Tensor? bias, float eps, float negative_slope) -> (Tensor, Tensor, Tensor)");

  // DiffAugment's colour, translation and cutout with per-sample parameters shift (N, 2) and cut (N, 4)
  // int64 and color (N, 3) on images x (N, C, H, W), as ganplug/ops/reference.py defines it: y = A x + a.
  m.def("diff_augment(Tensor x, Tensor shift, Tensor cut, Tensor color) -> Tensor");
  // Its linear part A x (adjoint=False: the forward without the constant) or A^T x (adjoint=True: the backward).
  m.def("diff_augment_linear(Tensor x, Tensor shift, Tensor cut, Tensor color, bool adjoint) -> Tensor");

  // scale * mean(bce_with_logits(logits, target)); target is the tensor if given (broadcast to the
  // logits' shape, cast to their dtype), else target_value.
  m.def("bce_loss(Tensor logits, Tensor? target, float target_value, float scale) -> Tensor");
  m.def("bce_loss_backward(Tensor grad, Tensor logits, Tensor? target, float target_value, float scale) -> Tensor");
  // The loss and its gradient with respect to the logits (at upstream grad 1) from one pass: what
  // the autograd kernel runs when the logits need a gradient, so the backward is a multiply.
  m.def("bce_loss_and_grad(Tensor logits, Tensor? target, float target_value, float scale) -> (Tensor, Tensor)");
  // The generator's losses as ganplug.ops names them: mean(bce(fake, target)) and -mean(softplus(fake)).
  m.def("generator_bce(Tensor fake_logits, Tensor? target, float target_value) -> Tensor");
  m.def("minimax_generator_loss(Tensor fake_logits) -> Tensor");
  // mean(bce(real, real_target)) + mean(bce(fake, fake_target)) in one pass over both.
  m.def("discriminator_bce(Tensor real_logits, Tensor fake_logits, Tensor? real_target, Tensor? fake_target, float real_value, float fake_value) -> Tensor");
  m.def("discriminator_bce_backward(Tensor grad, Tensor real_logits, Tensor fake_logits, Tensor? real_target, Tensor? fake_target, float real_value, float fake_value) -> (Tensor, Tensor)");
  m.def("discriminator_bce_and_grad(Tensor real_logits, Tensor fake_logits, Tensor? real_target, Tensor? fake_target, float real_value, float fake_value) -> (Tensor, Tensor, Tensor)");

  // mean(fake) - mean(real), and -mean(fake). Their backward is a broadcast, done in Python.
  m.def("wasserstein_critic_loss(Tensor real_scores, Tensor fake_scores) -> Tensor");
  m.def("wasserstein_generator_loss(Tensor fake_scores) -> Tensor");

  // Plane convolutions (cpu/plane_conv.cpp), stride and padding (rows, columns), zero padding: y (N, C, OH, OW) =
  // leaky_relu(conv2d(x (N, 1, H, W), weight (C, 1, KH, KW)) + bias (C,) or None, negative_slope >= 0; 1: none);
  // the adjoint of its convolution x = conv_transpose2d(y, weight) of output_size (H, W), no bias; and their weight
  // gradient, sum over n, pixels of y * x's taps, (C, 1, KH, KW).
  m.def("plane_conv(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, float negative_slope) -> Tensor");
  m.def("plane_conv_transpose(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] output_size) -> Tensor");
  m.def("plane_conv_weight(Tensor input, Tensor maps, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");

  // mean_i (||g_i||_2 - target)^2, g of shape (B, ...), norms over all but the first dim.
  m.def("gradient_penalty(Tensor gradients, float target) -> Tensor");
  m.def("gradient_penalty_backward(Tensor grad, Tensor gradients, float target) -> Tensor");

  // y = x * (keep ? 1 / (1 - p) : 0), 0 <= p <= 1, keep hashed from (seed, row-major index i) as
  // in dropout_mask.h: the same seed gives the same mask on every device and thread count.
  m.def("dropout(Tensor input, float p, int seed) -> Tensor");
}

// `import ganplug._C` loads this library, which runs the registrations above.
static struct PyModuleDef ganplug_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&ganplug_module); }
