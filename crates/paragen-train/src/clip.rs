//! Clipping by the global gradient norm (Pascanu et al. 2013): all gradients are scaled
//! by the same factor so that their joint L2 norm is at most `max_norm`. burn's own
//! clipping works per tensor, which changes the gradient's direction.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

struct ParamIds(Vec<(ParamId, usize)>);

impl<B: Backend> ModuleVisitor<B> for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push((param.id, D));
    }
}

fn squared_norm<B: Backend, const D: usize>(
    grads: &GradientsParams,
    id: ParamId,
) -> Option<Tensor<B, 1>> {
    grads.get::<B, D>(id).map(|g| g.powi_scalar(2).sum())
}

fn scale<B: Backend, const D: usize>(grads: &mut GradientsParams, id: ParamId, factor: f64) {
    if let Some(g) = grads.remove::<B, D>(id) {
        grads.register::<B, D>(id, g * factor);
    }
}

/// Scales `grads` in place so that their global norm is at most `max_norm`; returns the
/// norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let mut ids = ParamIds(Vec::new());
    module.visit(&mut ids);
    let mut total: Option<Tensor<B::InnerBackend, 1>> = None;
    for &(id, rank) in &ids.0 {
        let part = match rank {
            1 => squared_norm::<B::InnerBackend, 1>(grads, id),
            2 => squared_norm::<B::InnerBackend, 2>(grads, id),
            3 => squared_norm::<B::InnerBackend, 3>(grads, id),
            4 => squared_norm::<B::InnerBackend, 4>(grads, id),
            other => panic!("parameters of rank {other} are not supported"),
        };
        if let Some(part) = part {
            total = Some(match total {
                Some(t) => t + part,
                None => part,
            });
        }
    }
    let norm = total.map_or(0.0, |t| t.sqrt().into_scalar().elem::<f64>());
    if norm.is_finite() && norm > max_norm && max_norm > 0.0 {
        let factor = max_norm / (norm + 1e-6);
        for &(id, rank) in &ids.0 {
            match rank {
                1 => scale::<B::InnerBackend, 1>(grads, id, factor),
                2 => scale::<B::InnerBackend, 2>(grads, id, factor),
                3 => scale::<B::InnerBackend, 3>(grads, id, factor),
                _ => scale::<B::InnerBackend, 4>(grads, id, factor),
            }
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use paragen_backend::TestAutodiffBackend;

    type B = TestAutodiffBackend;

    fn global_norm(module: &Linear<B>, grads: &GradientsParams) -> f64 {
        let w = grads
            .get::<<B as AutodiffBackend>::InnerBackend, 2>(module.weight.id)
            .unwrap();
        let b = grads
            .get::<<B as AutodiffBackend>::InnerBackend, 1>(module.bias.as_ref().unwrap().id)
            .unwrap();
        (w.powi_scalar(2).sum() + b.powi_scalar(2).sum())
            .sqrt()
            .into_scalar()
            .elem::<f64>()
    }

    #[test]
    fn clipped_gradients_have_the_target_norm_and_direction() {
        let device = Default::default();
        let module: Linear<B> = LinearConfig::new(4, 3).init(&device);
        let x = Tensor::<B, 2>::ones([2, 4], &device) * 10.0;
        let loss = module.forward(x).sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &module);
        let before = global_norm(&module, &grads);
        let w_before = grads
            .get::<<B as AutodiffBackend>::InnerBackend, 2>(module.weight.id)
            .unwrap();
        let reported = clip_global_norm(&module, &mut grads, 1.0);
        assert!(
            (reported - before).abs() < 1e-3 * before,
            "{reported} vs {before}"
        );
        assert!((global_norm(&module, &grads) - 1.0).abs() < 1e-4);
        let w_after = grads
            .get::<<B as AutodiffBackend>::InnerBackend, 2>(module.weight.id)
            .unwrap();
        let ratio = (w_after / w_before)
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>();
        assert!(
            ratio.iter().all(|r| (r - ratio[0]).abs() < 1e-5),
            "{ratio:?}"
        );
    }
}
