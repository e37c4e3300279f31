//! `backend::init_model`: one seed gives the same initial weights, drawn at once. Flex keeps one
//! process-wide seeded generator, so this test has a test binary (a process) of its own: beside
//! the library's unit tests, another test seeding or drawing on another thread between the
//! seeding and the draws made it flaky.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use train::backend::{init_device, init_model};
use train::model::ModelConfig;

/// Every float parameter of `model`, flattened in visiting order.
fn weights<M: Module>(model: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let v = p.val().into_data().convert::<f32>();
            self.0.extend(v.iter::<f32>());
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

#[test]
fn init_model_draws_every_weight_from_its_seed_at_once() {
    let cfg = ModelConfig::from_toml_str(
        "kind = \"baseline\"\nbase_channels = 8\nn_blocks = [1, 1, 1]\n",
    )
    .unwrap();
    let dev = Device::flex().autodiff();
    assert_eq!(init_device(&dev), dev);
    assert_eq!(init_device(&Device::flex()), Device::flex());
    // A seed set after the initialisation (the trainer seeds every step) changes nothing.
    let a = init_model(&dev, 7, |d| cfg.init(10, d));
    dev.seed(99);
    let b = init_model(&dev, 7, |d| cfg.init(10, d));
    dev.seed(123);
    let (wa, wb) = (weights(&a), weights(&b));
    assert!(wa.len() > 1000 && wa.iter().all(|v| v.is_finite()));
    assert_eq!(wa, wb);
    assert_ne!(wa, weights(&init_model(&dev, 8, |d| cfg.init(10, d))));
    // What it guards against: burn draws a parameter at its first use, from the generator as
    // it is then.
    dev.seed(7);
    let lazy = cfg.init(10, &dev);
    dev.seed(99);
    assert_ne!(weights(&lazy), wa);
}
