//! The expansion of `#[derive(LoraModel)]`.

use proc_macro2::{Ident, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Data, DeriveInput, Field, GenericParam, Index, Member, Type, TypeParamBound, WherePredicate,
};

use crate::types::{element_type, Params};

/// The `impl ::burn_lora::VisitLoraLayers<B>` and `LoraModel<B>` for `input`, or the errors that prevent it.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let fields = match &input.data {
        Data::Struct(data) => &data.fields,
        Data::Enum(data) => return Err(not_a_struct(input, data.enum_token.span, "an enum")),
        Data::Union(data) => return Err(not_a_struct(input, data.union_token.span, "a union")),
    };
    let params = params(input)?;
    let backend = params.backend;

    let mut visits = Vec::new();
    let mut visits_mut = Vec::new();
    let mut bounds: Vec<WherePredicate> = Vec::new();
    let mut errors: Option<syn::Error> = None;
    let mut push_error = |error: syn::Error| match &mut errors {
        Some(errors) => errors.combine(error),
        None => errors = Some(error),
    };

    for (index, field) in fields.iter().enumerate() {
        match is_skipped(field) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(error) => {
                push_error(error);
                continue;
            }
        }
        let ty = &field.ty;
        if let Some(why) = params.unsupported(ty) {
            push_error(syn::Error::new_spanned(
                ty,
                unsupported_message(field, &why),
            ));
            continue;
        }
        if is_phantom(ty) {
            continue;
        }
        let member = match &field.ident {
            Some(ident) => Member::Named(ident.clone()),
            None => Member::Unnamed(Index::from(index)),
        };
        let span = ty.span();
        if params.mentions_other_param(ty) {
            // A generic field: which impl applies is only known once the parameter is chosen,
            // so the bound says it must hold LoRA layers (or be marked `#[lora(skip)]`).
            bounds.push(
                syn::parse_quote_spanned!(span=> #ty: ::burn_lora::VisitLoraLayers<#backend>),
            );
            visits.push(quote_spanned! {span=>
                <#ty as ::burn_lora::VisitLoraLayers<#backend>>::visit_lora_layers(&self.#member, layers);
            });
            visits_mut.push(quote_spanned! {span=>
                <#ty as ::burn_lora::VisitLoraLayers<#backend>>::visit_lora_layers_mut(
                    &mut self.#member,
                    layers,
                );
            });
        } else {
            // Autoref specialization: `Probe<T>` has `visit` when `T: VisitLoraLayers<B>`, else the
            // method is found on `&Probe<T>`, which visits nothing.
            if params.mentions_backend(ty) {
                visits.push(checked_visit(field, &member, ty, backend));
            } else {
                // Not generic over the backend (`usize`, `Dropout`, a config): it cannot hold a
                // `LoraLayer<B>`, whatever it is.
                visits.push(quote_spanned! {span=>
                    {
                        use ::burn_lora::__private::{VisitLayers as _, VisitNothing as _};
                        ::burn_lora::__private::Probe::<#backend, #ty, ()>::new(&self.#member)
                            .visit(layers);
                    }
                });
            }
            // The same choice as in `visit_lora_layers`, so no second error.
            visits_mut.push(quote_spanned! {span=>
                ::burn_lora::__private::ProbeMut::<#backend, #ty>::new(&mut self.#member)
                    .visit_mut(layers);
            });
        }
    }
    if let Some(errors) = errors {
        return Err(errors);
    }

    let name = &input.ident;
    if !params.others.is_empty() {
        // `LoraModel<B>: Module<B>`, and Burn's derive bounds the other parameters its own way
        // (`M: Module<B> + ModuleDisplay`): ask for exactly the impl it generated.
        let (_, type_generics, _) = input.generics.split_for_impl();
        bounds.push(
            syn::parse_quote!(#name #type_generics: ::burn_lora::__private::Module<#backend>),
        );
    }
    let mut generics = input.generics.clone();
    generics.make_where_clause().predicates.extend(bounds);
    let (impl_generics, type_generics, where_clause) = generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::burn_lora::VisitLoraLayers<#backend> for #name #type_generics
        #where_clause
        {
            #[allow(unused_imports, unused_variables)]
            fn visit_lora_layers<'__lora>(
                &'__lora self,
                layers: &mut ::std::vec::Vec<&'__lora dyn ::burn_lora::LoraLayer<#backend>>,
            ) {
                #(#visits)*
            }

            #[allow(unused_imports, unused_variables)]
            fn visit_lora_layers_mut<'__lora>(
                &'__lora mut self,
                layers: &mut ::std::vec::Vec<&'__lora mut dyn ::burn_lora::LoraLayer<#backend>>,
            ) {
                use ::burn_lora::__private::{VisitLayersMut as _, VisitNothingMut as _};
                #(#visits_mut)*
            }
        }

        #[automatically_derived]
        impl #impl_generics ::burn_lora::LoraModel<#backend> for #name #type_generics
        #where_clause
        {
        }
    })
}

/// The visit of a field generic over the backend: its layers when its type is a LoRA model
/// (the by-value `Probe` method), nothing when it is one of Burn's modules known to hold none
/// (`NoLoraLayers`), and otherwise a compile error on the field's type, naming the field. The error comes from a trait local to the field's block,
/// whose `on_unimplemented` message names it; the second `visit` requires it of the type the
/// field's `Vec`, `Option` or array holds, so the message is about that type (`Block<B>`, not
/// `Vec<Block<B>>`).
fn checked_visit(field: &Field, member: &Member, ty: &Type, backend: &Ident) -> TokenStream {
    let name = match &field.ident {
        Some(ident) => ident.unraw().to_string(),
        None => match member {
            Member::Unnamed(index) => index.index.to_string(),
            Member::Named(ident) => ident.to_string(),
        },
    };
    let message = format!(
        "derive(LoraModel) cannot list the LoRA layers of field `{name}`: its type `{{Self}}` is \
         generic over the backend but is not a LoRA model"
    );
    let label = "neither a LoRA model nor one of Burn's modules that hold no LoRA layer";
    let note = "derive `LoraModel` on `{Self}` (a type without LoRA layers then lists none), \
                or mark the field `#[lora(skip)]` if it holds no LoRA layer";
    let element = element_type(ty);
    // On the type the error is about: `Block` in `Vec<Block<B>>`.
    let span = element.span();
    quote_spanned! {span=>
        {
            use ::burn_lora::__private::VisitLayers as _;

            #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
            #[allow(dead_code)]
            trait __LoraField<__B> {}

            #[diagnostic::do_not_recommend]
            impl<__B, __T> __LoraField<__B> for __T
            where
                __B: ::burn_lora::__private::Backend,
                __T: ?::core::marker::Sized + ::burn_lora::__private::NoLoraLayers<__B>,
            {
            }

            #[allow(dead_code)]
            trait __VisitNothing<'__a, __B: ::burn_lora::__private::Backend, __E: ?::core::marker::Sized> {
                fn visit(&self, _layers: &mut ::std::vec::Vec<&'__a dyn ::burn_lora::LoraLayer<__B>>)
                where
                    __E: __LoraField<__B>,
                {
                }
            }

            impl<'__a, __B, __T, __E> __VisitNothing<'__a, __B, __E>
                for ::burn_lora::__private::Probe<'__a, __B, __T, __E>
            where
                __B: ::burn_lora::__private::Backend,
                __T: ?::core::marker::Sized,
                __E: ?::core::marker::Sized,
            {
            }

            ::burn_lora::__private::Probe::<#backend, #ty, #element>::new(&self.#member).visit(layers);
        }
    }
}

fn not_a_struct(input: &DeriveInput, span: proc_macro2::Span, what: &str) -> syn::Error {
    syn::Error::new(
        span,
        format!(
            "derive(LoraModel) supports structs, and `{}` is {what}: implement `LoraModel` by \
             hand for it (push the LoRA layers of every variant in `visit_lora_layers` and \
             `visit_lora_layers_mut`, in the same order)",
            input.ident
        ),
    )
}

/// The backend parameter (the type parameter bounded by `Backend`, else the one named `B`) and
/// the other type parameters.
fn params(input: &DeriveInput) -> syn::Result<Params<'_>> {
    let generics = &input.generics;
    let is_backend_bound = |bound: &TypeParamBound| {
        matches!(bound, TypeParamBound::Trait(t)
            if t.path.segments.last().is_some_and(|s| s.ident == "Backend" || s.ident == "AutodiffBackend"))
    };
    let mut bounded: Vec<&Ident> = Vec::new();
    for param in generics.type_params() {
        if param.bounds.iter().any(is_backend_bound) {
            bounded.push(&param.ident);
        }
    }
    for predicate in generics.where_clause.iter().flat_map(|w| &w.predicates) {
        if let WherePredicate::Type(predicate) = predicate {
            if let Type::Path(path) = &predicate.bounded_ty {
                if let Some(param) = generics
                    .type_params()
                    .find(|p| path.qself.is_none() && path.path.is_ident(&p.ident))
                {
                    if predicate.bounds.iter().any(is_backend_bound)
                        && !bounded.contains(&&param.ident)
                    {
                        bounded.push(&param.ident);
                    }
                }
            }
        }
    }
    let backend = match bounded.as_slice() {
        [backend] => *backend,
        [] => match generics.type_params().find(|p| p.ident == "B") {
            Some(param) => &param.ident,
            None => {
                return Err(syn::Error::new(
                    input.ident.span(),
                    format!(
                        "derive(LoraModel) needs the backend as a type parameter: `{}` has no \
                         type parameter bounded by `Backend` (write `struct {}<B: Backend>` and \
                         use `LoraLinear<B>` and friends in its fields)",
                        input.ident, input.ident
                    ),
                ))
            }
        },
        [first, second, ..] => {
            return Err(syn::Error::new(
                second.span(),
                format!(
                    "derive(LoraModel) needs one backend type parameter, but `{first}` and \
                     `{second}` are both bounded by `Backend`"
                ),
            ))
        }
    };
    let others = generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) if t.ident != *backend => Some(&t.ident),
            _ => None,
        })
        .collect();
    Ok(Params { backend, others })
}

/// Whether the field is marked `#[lora(skip)]`; an error for any other `lora` attribute.
fn is_skipped(field: &Field) -> syn::Result<bool> {
    let mut skip = false;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("lora")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip = true;
                Ok(())
            } else {
                Err(meta.error("unknown `lora` attribute: the only one is `#[lora(skip)]`"))
            }
        })?;
    }
    Ok(skip)
}

/// `PhantomData<…>`: never holds a layer, and needs no bound even when generic.
fn is_phantom(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none()
        && p.path.segments.last().is_some_and(|s| s.ident == "PhantomData"))
}

fn unsupported_message(field: &Field, why: &str) -> String {
    let field = match &field.ident {
        Some(ident) => format!("field `{ident}`"),
        None => "this field".to_string(),
    };
    format!(
        "derive(LoraModel) cannot list LoRA layers inside {why}.\nHold the layers of {field} in \
         a `Vec`, an `Option`, an array, or a nested struct that derives `LoraModel`; or mark \
         the field `#[lora(skip)]` if it holds no LoRA layer"
    )
}

#[cfg(test)]
mod tests {
    use super::expand;

    /// The expansion as a string without spaces, or the error messages.
    fn expanded(input: &str) -> Result<String, String> {
        let input = syn::parse_str(input).unwrap();
        match expand(&input) {
            Ok(tokens) => Ok(tokens.to_string().replace(' ', "")),
            Err(errors) => Err(errors
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    #[test]
    fn visits_fields_in_order_both_ways_and_skips() {
        let code = expanded(
            "struct Net<B: Backend> {
                blocks: Vec<Block<B>>,
                #[lora(skip)]
                frozen: LoraLinear<B>,
                norm: LayerNorm<B>,
                head: LoraLinear<B>,
                _marker: PhantomData<B>,
            }",
        )
        .unwrap();
        assert!(code.contains("impl<B:Backend>::burn_lora::LoraModel<B>forNet<B>"));
        let order = |member: &str| {
            code.match_indices(member)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        let (blocks, norm, head) = (order("self.blocks"), order("self.norm"), order("self.head"));
        assert_eq!((blocks.len(), norm.len(), head.len()), (2, 2, 2));
        assert!(blocks[0] < norm[0] && norm[0] < head[0] && head[0] < blocks[1]);
        assert!(blocks[1] < norm[1] && norm[1] < head[1]);
        assert!(!code.contains("self.frozen") && !code.contains("self._marker"));
    }

    #[test]
    fn tuple_structs_visit_fields_by_index() {
        let code = expanded("struct Pair<B: Backend>(LoraLinear<B>, #[lora(skip)] LoraLinear<B>, Vec<LoraLinear<B>>);")
            .unwrap();
        assert!(code.contains("(&self.0)") && code.contains("(&self.2)"));
        assert!(code.contains("(&mutself.0)") && code.contains("(&mutself.2)"));
        assert!(!code.contains("self.1"));
    }

    #[test]
    fn generic_fields_are_bounded_and_called_directly() {
        let code = expanded(
            "struct Wrapper<B: Backend, M: Module<B>> { inner: M, items: Vec<M>, head: LoraLinear<B> }",
        )
        .unwrap();
        assert!(code.contains("M:::burn_lora::VisitLoraLayers<B>"));
        assert!(code.contains("Vec<M>:::burn_lora::VisitLoraLayers<B>"));
        assert!(code.contains("Wrapper<B,M>:::burn_lora::__private::Module<B>"));
        assert!(
            code.contains("<Mas::burn_lora::VisitLoraLayers<B>>::visit_lora_layers(&self.inner")
        );
        // A skipped generic field needs no bound.
        let code =
            expanded("struct Plain<B: Backend, M> { #[lora(skip)] inner: M, head: LoraLinear<B> }")
                .unwrap();
        assert!(!code.contains("M:::burn_lora::VisitLoraLayers"));
    }

    #[test]
    fn finds_the_backend_parameter() {
        let with =
            |input: &str| expanded(input).map(|code| code[..code.find('{').unwrap()].to_string());
        assert!(
            with("struct S<T, Bk: burn::tensor::backend::Backend> { x: LoraLinear<Bk> }")
                .unwrap()
                .contains("::burn_lora::VisitLoraLayers<Bk>forS<T,Bk>")
        );
        assert!(
            with("struct S<Bk> where Bk: AutodiffBackend { x: LoraLinear<Bk> }")
                .unwrap()
                .contains("::burn_lora::VisitLoraLayers<Bk>")
        );
        assert!(with("struct S<B> { x: LoraLinear<B> }")
            .unwrap()
            .contains("::burn_lora::VisitLoraLayers<B>"));
        let no_backend = expanded("struct S<T> { x: T }").unwrap_err();
        assert!(
            no_backend.contains("no type parameter bounded by `Backend`"),
            "{no_backend}"
        );
        let two = expanded("struct S<B1: Backend, B2: Backend> { x: u8 }").unwrap_err();
        assert!(two.contains("`B1` and `B2`"), "{two}");
    }

    #[test]
    fn rejects_containers_that_hide_layers() {
        let cases = [
            ("HashMap<String, LoraLinear<B>>", "`HashMap`"),
            ("Vec<BTreeMap<usize, Block<B>>>", "`BTreeMap`"),
            ("Box<dyn Module<B>>", "trait object"),
            ("Box<Block<B>>", "`Box`"),
            ("Arc<LoraLinear<B>>", "`Arc`"),
            ("Option<RefCell<LoraLinear<B>>>", "`RefCell`"),
            ("std::sync::Mutex<M>", "`Mutex`"),
            ("&'static LoraLinear<B>", "a reference"),
            ("*const Block<B>", "a raw pointer"),
            ("(LoraLinear<B>, LoraLinear<B>)", "a tuple"),
            ("[(usize, Block<B>); 2]", "a tuple"),
            ("Box<[LoraLinear<B>]>", "`Box`"),
        ];
        for (ty, expected) in cases {
            let result = expanded(&format!("struct S<B: Backend, M> {{ field: {ty} }}"));
            let message = result.expect_err(ty);
            assert!(message.contains(expected), "{ty}: {message}");
            assert!(message.contains("#[lora(skip)]"), "{ty}: {message}");
        }
    }

    #[test]
    fn accepts_the_same_containers_holding_plain_data() {
        for ty in [
            "HashMap<String, usize>",
            "(usize, f32)",
            "Arc<str>",
            "Box<dyn Fn(usize) -> usize + Send>",
            "&'static str",
            "Option<Vec<[LoraLinear<B>; 3]>>",
            "Vec<burn_lora::LoraConv2d<B>>",
        ] {
            let result = expanded(&format!("struct S<B: Backend> {{ field: {ty} }}"));
            assert!(result.is_ok(), "{ty}: {result:?}");
        }
    }

    #[test]
    fn every_bad_field_is_reported_and_unknown_attributes_too() {
        let errors = expanded(
            "struct S<B: Backend> {
                a: HashMap<u8, LoraLinear<B>>,
                #[lora(skip)]
                b: HashMap<u8, LoraLinear<B>>,
                #[lora(skp)]
                c: LoraLinear<B>,
                d: (LoraLinear<B>,),
            }",
        )
        .unwrap_err();
        assert_eq!(
            errors.lines().filter(|l| l.starts_with("derive")).count(),
            2,
            "{errors}"
        );
        assert!(
            errors.contains("field `a`") && errors.contains("field `d`"),
            "{errors}"
        );
        assert!(errors.contains("unknown `lora` attribute"), "{errors}");
    }

    #[test]
    fn fields_generic_over_the_backend_must_be_lora_models_or_known_leaves() {
        let code = expanded(
            "struct S<B: Backend> {
                block: Vec<Option<Block<B>>>,
                width: usize,
                device: B::Device,
                r#type: [Block<B>; 2],
            }",
        )
        .unwrap();
        // The generic fields get the check, on the type their containers hold, in a message
        // naming the field; the others do not.
        let checked =
            |field: &str| code.contains(&format!("cannotlisttheLoRAlayersoffield`{field}`"));
        assert!(checked("block") && checked("type"), "{code}");
        assert!(!checked("width") && !checked("device"), "{code}");
        assert!(code.contains("Probe::<B,Vec<Option<Block<B>>>,Block<B>>::new(&self.block)"));
        assert!(code.contains("Probe::<B,[Block<B>;2],Block<B>>::new(&self.r#type)"));
        assert!(code.contains("Probe::<B,usize,()>::new(&self.width)"));
        let code = expanded("struct P<B: Backend>(usize, Tensor<B, 2>);").unwrap();
        assert!(
            code.contains("field`1`") && !code.contains("field`0`"),
            "{code}"
        );
    }

    #[test]
    fn enums_and_unions_are_errors() {
        for input in [
            "enum E<B: Backend> { A(LoraLinear<B>) }",
            "union U<B: Backend> { a: u8 }",
        ] {
            let error = expanded(input).unwrap_err();
            assert!(
                error.contains("derive(LoraModel) supports structs"),
                "{error}"
            );
        }
    }
}
