//! What the derive reads from a field's type, syntactically: whether it names a generic
//! parameter or the backend, which type a `Vec`, `Option` or array holds, and whether it puts
//! something that could hold LoRA layers inside a container the layer list cannot go through.

use proc_macro2::Ident;
use syn::{GenericArgument, PathArguments, ReturnType, Type, TypeParamBound};

/// The LoRA layer types of burn-lora.
const LORA_LAYERS: [&str; 3] = ["LoraLinear", "LoraEmbedding", "LoraConv2d"];

/// What the derive knows about the struct's type parameters.
pub(crate) struct Params<'a> {
    /// The backend parameter.
    pub backend: &'a Ident,
    /// Every other type parameter.
    pub others: Vec<&'a Ident>,
}

impl Params<'_> {
    /// Whether `ty` names a type parameter other than the backend (`M`, `Vec<M>`, `M::Output`).
    pub fn mentions_other_param(&self, ty: &Type) -> bool {
        any_ident(ty, &mut |ident, first| {
            first && self.others.contains(&ident)
        })
    }

    /// Whether `ty` takes the backend itself as a type argument (`Block<B>`, `Vec<Tensor<B, 2>>`),
    /// so that it is a Burn module generic over the backend. The backend's associated types
    /// (`B::Device`, `<B as Backend>::FloatElem`) do not count.
    pub fn mentions_backend(&self, ty: &Type) -> bool {
        names_bare(ty, self.backend)
    }

    /// Whether `ty` could hold a LoRA layer: it names one, the backend or another type
    /// parameter (`Block<B>`, `Linear<B>`, `M`). `usize` or `String` could not.
    fn could_hold_layers(&self, ty: &Type) -> bool {
        any_ident(ty, &mut |ident, first| {
            LORA_LAYERS.iter().any(|l| ident == l)
                || (first && (ident == self.backend || self.others.contains(&ident)))
        })
    }

    /// Why `ty` is not supported, if it puts something that could hold LoRA layers inside a
    /// container the derive cannot list them through (anywhere in the type, so
    /// `Vec<HashMap<..>>` counts too). `None` when the type is fine.
    pub fn unsupported(&self, ty: &Type) -> Option<String> {
        match ty {
            Type::Path(path) => {
                if let Some(qself) = &path.qself {
                    if let Some(why) = self.unsupported(&qself.ty) {
                        return Some(why);
                    }
                }
                for segment in &path.path.segments {
                    let PathArguments::AngleBracketed(args) = &segment.arguments else {
                        continue;
                    };
                    let inner: Vec<&Type> = args
                        .args
                        .iter()
                        .filter_map(|arg| match arg {
                            GenericArgument::Type(ty) => Some(ty),
                            _ => None,
                        })
                        .collect();
                    let name = segment.ident.to_string();
                    if let Some(why) = container_problem(&name, &inner) {
                        if inner.iter().any(|ty| self.could_hold_layers(ty)) {
                            return Some(why);
                        }
                    }
                    if let Some(why) = inner.iter().find_map(|ty| self.unsupported(ty)) {
                        return Some(why);
                    }
                }
                None
            }
            Type::Reference(reference) => self.inside(
                &reference.elem,
                "a reference: a model owns its layers, so that `lora_layers_mut` can lend them \
                 mutably",
            ),
            Type::Ptr(pointer) => self.inside(
                &pointer.elem,
                "a raw pointer: a model owns its layers, so that `lora_layers_mut` can lend them \
                 mutably",
            ),
            Type::Tuple(tuple) => {
                if tuple.elems.iter().any(|ty| self.could_hold_layers(ty)) {
                    Some(
                        "a tuple: its parts have no field names, so they are not visited"
                            .to_string(),
                    )
                } else {
                    tuple.elems.iter().find_map(|ty| self.unsupported(ty))
                }
            }
            Type::Slice(slice) => self.inside(
                &slice.elem,
                "a slice: its length is not part of the type (use a `Vec` or an array)",
            ),
            Type::TraitObject(_) if self.could_hold_layers(ty) => Some(
                "a trait object: its concrete type, and so its LoRA layers, cannot be seen"
                    .to_string(),
            ),
            Type::Array(array) => self.unsupported(&array.elem),
            Type::Paren(inner) => self.unsupported(&inner.elem),
            Type::Group(inner) => self.unsupported(&inner.elem),
            _ => None,
        }
    }

    /// `why` if `inner` could hold layers, else what is unsupported inside `inner`.
    fn inside(&self, inner: &Type, why: &str) -> Option<String> {
        if self.could_hold_layers(inner) {
            Some(why.to_string())
        } else {
            self.unsupported(inner)
        }
    }
}

/// The type a field's `Vec`, `Option` or array holds, through any depth of them
/// (`Block<B>` for `Vec<Option<[Block<B>; 2]>>`); `ty` itself for any other type.
pub(crate) fn element_type(ty: &Type) -> &Type {
    match ty {
        Type::Array(array) => element_type(&array.elem),
        Type::Paren(inner) => element_type(&inner.elem),
        Type::Group(inner) => element_type(&inner.elem),
        Type::Path(path) if path.qself.is_none() => {
            let Some(last) = path.path.segments.last() else {
                return ty;
            };
            let PathArguments::AngleBracketed(args) = &last.arguments else {
                return ty;
            };
            let mut args = args.args.iter();
            match (args.next(), args.next()) {
                (Some(GenericArgument::Type(inner)), None)
                    if last.ident == "Vec" || last.ident == "Option" =>
                {
                    element_type(inner)
                }
                _ => ty,
            }
        }
        _ => ty,
    }
}

/// Whether the path made of `param` alone appears in `ty`, outside qualified-self position.
fn names_bare(ty: &Type, param: &Ident) -> bool {
    match ty {
        Type::Path(path) => {
            let segments = &path.path.segments;
            if path.qself.is_none()
                && path.path.leading_colon.is_none()
                && segments.len() == 1 // so `segments[0]` exists
                && segments[0].ident == *param
                && segments[0].arguments.is_empty()
            {
                return true;
            }
            segments.iter().any(|segment| match &segment.arguments {
                PathArguments::AngleBracketed(args) => args.args.iter().any(|arg| match arg {
                    GenericArgument::Type(ty) => names_bare(ty, param),
                    GenericArgument::AssocType(assoc) => names_bare(&assoc.ty, param),
                    _ => false,
                }),
                _ => false,
            })
        }
        Type::Reference(r) => names_bare(&r.elem, param),
        Type::Ptr(p) => names_bare(&p.elem, param),
        Type::Slice(s) => names_bare(&s.elem, param),
        Type::Array(a) => names_bare(&a.elem, param),
        Type::Paren(p) => names_bare(&p.elem, param),
        Type::Group(g) => names_bare(&g.elem, param),
        Type::Tuple(t) => t.elems.iter().any(|ty| names_bare(ty, param)),
        _ => false,
    }
}

/// Why the container `name<inner…>` cannot hold LoRA layers for the derive, if it cannot.
fn container_problem(name: &str, inner: &[&Type]) -> Option<String> {
    let dyn_box = name == "Box" && inner.iter().any(|ty| matches!(ty, Type::TraitObject(_)));
    let why = match name {
        "HashMap" | "HashSet" => {
            "it has no fixed order, so the layer list would change from run to run, and Burn \
             modules cannot hold one"
        }
        "BTreeMap" | "BTreeSet" | "VecDeque" | "LinkedList" | "BinaryHeap" | "IndexMap"
        | "IndexSet" => "Burn modules cannot hold one, so its layers would have no module path",
        "Box" if dyn_box => {
            "a trait object's concrete type, and so its LoRA layers, cannot be seen"
        }
        "Box" => "Burn modules cannot hold a `Box`, so its layers would have no module path",
        "Rc" | "Arc" => {
            "a shared layer cannot be lent mutably, and one layer could sit at several paths"
        }
        "RefCell" | "Cell" | "Mutex" | "RwLock" | "OnceCell" | "OnceLock" => {
            "a layer behind interior mutability cannot be borrowed for as long as the layer list \
             lives"
        }
        _ => return None,
    };
    let name = if dyn_box { "Box<dyn …>" } else { name };
    Some(format!("`{name}`: {why}"))
}

/// Whether `visit(ident, first)` holds for some identifier of a path inside `ty`; `first` says
/// whether it begins its path (`B` in `B::Device`, not `Device`).
fn any_ident(ty: &Type, visit: &mut dyn FnMut(&Ident, bool) -> bool) -> bool {
    match ty {
        Type::Path(path) => {
            if let Some(qself) = &path.qself {
                if any_ident(&qself.ty, visit) {
                    return true;
                }
            }
            path_any_ident(&path.path, visit)
        }
        Type::Reference(r) => any_ident(&r.elem, visit),
        Type::Ptr(p) => any_ident(&p.elem, visit),
        Type::Slice(s) => any_ident(&s.elem, visit),
        Type::Array(a) => any_ident(&a.elem, visit),
        Type::Paren(p) => any_ident(&p.elem, visit),
        Type::Group(g) => any_ident(&g.elem, visit),
        Type::Tuple(t) => t.elems.iter().any(|ty| any_ident(ty, visit)),
        Type::TraitObject(t) => bounds_any_ident(t.bounds.iter(), visit),
        Type::ImplTrait(t) => bounds_any_ident(t.bounds.iter(), visit),
        Type::BareFn(f) => {
            f.inputs.iter().any(|arg| any_ident(&arg.ty, visit))
                || matches!(&f.output, ReturnType::Type(_, ty) if any_ident(ty, visit))
        }
        _ => false,
    }
}

fn bounds_any_ident<'a>(
    mut bounds: impl Iterator<Item = &'a TypeParamBound>,
    visit: &mut dyn FnMut(&Ident, bool) -> bool,
) -> bool {
    bounds.any(|bound| match bound {
        TypeParamBound::Trait(t) => path_any_ident(&t.path, visit),
        _ => false,
    })
}

fn path_any_ident(path: &syn::Path, visit: &mut dyn FnMut(&Ident, bool) -> bool) -> bool {
    path.segments.iter().enumerate().any(|(index, segment)| {
        if visit(&segment.ident, index == 0 && path.leading_colon.is_none()) {
            return true;
        }
        match &segment.arguments {
            PathArguments::AngleBracketed(args) => args.args.iter().any(|arg| match arg {
                GenericArgument::Type(ty) => any_ident(ty, visit),
                GenericArgument::AssocType(assoc) => any_ident(&assoc.ty, visit),
                _ => false,
            }),
            PathArguments::Parenthesized(args) => {
                args.inputs.iter().any(|ty| any_ident(ty, visit))
                    || matches!(&args.output, ReturnType::Type(_, ty) if any_ident(ty, visit))
            }
            PathArguments::None => false,
        }
    })
}
