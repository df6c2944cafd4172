//! Named access to a module's float parameters: `blocks.0.mingru.to_hz.weight` and so on.
//! Used by the optimiser (per-parameter state, weight-decay rules) and by checkpoints.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor};

/// A parameter flattened to one dimension, with its original shape.
#[derive(Clone, Debug)]
pub struct Flat {
    pub shape: Vec<usize>,
    pub value: Tensor<1>,
}

#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn joined(&self) -> String {
        self.0.join(".")
    }
}

/// Every float parameter of `module`, by path, as a flat tensor (sharing storage, no copy).
pub fn named_params<M: Module>(module: &M) -> BTreeMap<String, Flat> {
    collect(module, None)
}

/// The gradient in `grads` of every float parameter of `module` that has one, by path, flat.
pub fn named_grads<M: Module>(module: &M, grads: &Gradients) -> BTreeMap<String, Flat> {
    collect(module, Some(grads))
}

fn collect<M: Module>(module: &M, grads: Option<&Gradients>) -> BTreeMap<String, Flat> {
    struct Collect<'a> {
        path: Path,
        grads: Option<&'a Gradients>,
        out: BTreeMap<String, Flat>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = match self.grads {
                None => param.val(),
                Some(grads) => match param.val().grad(grads) {
                    Some(g) => g,
                    None => return,
                },
            };
            let shape = value.dims().to_vec();
            let n: usize = shape.iter().product();
            self.out.insert(self.path.joined(), Flat { shape, value: value.reshape([n]) });
        }
    }
    let mut c = Collect { path: Path::default(), grads, out: BTreeMap::new() };
    module.visit(&mut c);
    c.out
}

/// Replaces each float parameter of `module` by `f(path, current) -> new` (both flat, `[N]`,
/// without autodiff).
/// The new value keeps the parameter's id and whether it requires a gradient.
pub fn map_params<M: Module>(module: M, f: &mut dyn FnMut(&str, Tensor<1>) -> Tensor<1>) -> M {
    struct Map<'a> {
        path: Path,
        f: &'a mut dyn FnMut(&str, Tensor<1>) -> Tensor<1>,
    }
    impl ModuleMapper for Map<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let require_grad = tensor.is_require_grad();
            let dims = tensor.dims();
            let n: usize = dims.iter().product();
            let autodiff = tensor.is_autodiff();
            // Computed outside autodiff, then made a fresh leaf again.
            let new = (self.f)(&self.path.joined(), tensor.inner().reshape([n])).reshape(dims).inner();
            let new = if autodiff { new.autodiff() } else { new };
            let new = if require_grad { new.require_grad() } else { new };
            Param::from_mapped_value(id, new, mapper)
        }
    }
    module.map(&mut Map { path: Path::default(), f })
}
