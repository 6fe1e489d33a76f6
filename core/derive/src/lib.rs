//! `#[derive(Model)]` for duet: reads the struct and its `#[duet(…)]`
//! attributes and writes the `Model` impl (table metadata, decoding by
//! position, bound values, the key), typed column constants and foreign
//! keys. The attributes are documented on `duet_core::orm::Model`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote};
use syn::{parse_macro_input, Data, DeriveInput, Expr, ExprLit, Fields, Ident, Lit, LitStr, Path, Type};

#[proc_macro_derive(Model, attributes(duet))]
pub fn derive_model(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// `#[derive(FromRow)]`: a struct made from a row by column name (the
/// field's name, or `#[duet(column = "…")]`).
#[proc_macro_derive(FromRow, attributes(duet))]
pub fn derive_from_row(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand_from_row(input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// `#[derive(FromJoined)]`: a struct made from a joined row's models, field
/// by field in order (`From<(Message, Option<User>, Option<User>)>`), for
/// `Joined::all_into`.
#[proc_macro_derive(FromJoined)]
pub fn derive_from_joined(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand_from_joined(input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_from_joined(input: DeriveInput) -> syn::Result<Tokens> {
    let ident = &input.ident;
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(f) => &f.named,
            _ => {
                return Err(syn::Error::new_spanned(
                    ident,
                    "FromJoined needs a struct with named fields",
                ))
            }
        },
        _ => {
            return Err(syn::Error::new_spanned(
                ident,
                "FromJoined can only be derived for a struct",
            ))
        }
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "FromJoined cannot be derived for a generic struct",
        ));
    }
    let names: Vec<&Ident> = fields.iter().map(|f| f.ident.as_ref().expect("named field")).collect();
    let types: Vec<&Type> = fields.iter().map(|f| &f.ty).collect();
    Ok(quote! {
        impl ::core::convert::From<(#(#types,)*)> for #ident {
            fn from((#(#names,)*): (#(#types,)*)) -> Self {
                #ident { #(#names),* }
            }
        }
    })
}

fn expand_from_row(input: DeriveInput) -> syn::Result<Tokens> {
    let core = core_path();
    let ident = &input.ident;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            ident,
            "FromRow applies to structs with named fields",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(
            ident,
            "FromRow applies to structs with named fields",
        ));
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "FromRow cannot be derived for a generic struct",
        ));
    }
    let mut inits = Vec::new();
    for f in &fields.named {
        let field = f.ident.as_ref().expect("named field");
        let a = parse_field_attrs(&f.attrs)?;
        let column = a
            .column
            .clone()
            .unwrap_or_else(|| field.to_string().trim_start_matches("r#").to_string());
        inits.push(quote!(#field: row.try_get(#column)?));
    }
    Ok(quote! {
        impl #core::FromRow for #ident {
            fn from_row(row: &#core::Row) -> ::core::result::Result<Self, #core::Error> {
                ::core::result::Result::Ok(#ident { #(#inits,)* })
            }
        }
    })
}

/// `#[derive(PgEnum)]`: a Rust enum as a PostgreSQL enum column type. Reads
/// the same `#[postgres(name = "…")]` attributes as `postgres-types`'
/// `ToSql`/`FromSql` derives (which the enum also needs) and writes its
/// `SqlType`, whose `CREATE` lets `create_table` create the type.
#[proc_macro_derive(PgEnum, attributes(postgres))]
pub fn derive_pg_enum(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand_pg_enum(input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The `name = "…"` of a `#[postgres(…)]` attribute; `rename_all` is
/// refused (the labels must be written out to be created).
fn postgres_name(attrs: &[syn::Attribute]) -> syn::Result<Option<String>> {
    let mut name = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("postgres")) {
        attr.parse_nested_meta(|m| {
            if m.path.is_ident("name") {
                name = Some(m.value()?.parse::<LitStr>()?.value());
                Ok(())
            } else if m.path.is_ident("rename_all") {
                Err(m.error("PgEnum needs each label written out: use #[postgres(name = \"…\")] on the variants"))
            } else {
                // Other postgres-types options are theirs to read.
                let _ = m.value().and_then(|v| v.parse::<Expr>());
                Ok(())
            }
        })?;
    }
    Ok(name)
}

fn expand_pg_enum(input: DeriveInput) -> syn::Result<Tokens> {
    let core = core_path();
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new_spanned(&input.ident, "PgEnum applies to enums"));
    };
    let ident = &input.ident;
    let name = postgres_name(&input.attrs)?.unwrap_or_else(|| ident.to_string());
    let mut labels = Vec::new();
    for v in &data.variants {
        if !matches!(v.fields, Fields::Unit) {
            return Err(syn::Error::new_spanned(v, "a PgEnum's variants carry no data"));
        }
        let label = postgres_name(&v.attrs)?.unwrap_or_else(|| v.ident.to_string());
        labels.push(format!("'{}'", label.replace('\'', "''")));
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let create = format!("CREATE TYPE {quoted} AS ENUM ({})", labels.join(", "));
    Ok(quote! {
        impl #core::orm::SqlType for #ident {
            const SQL: &'static str = #quoted;
            type Base = #ident;
            const CREATE: ::core::option::Option<&'static str> = ::core::option::Option::Some(#create);
        }
    })
}

/// The path to `duet_core` as the deriving crate sees it: directly, or
/// re-exported by the driver it depends on.
fn core_path() -> Tokens {
    use proc_macro_crate::{crate_name, FoundCrate};
    let found = |name: &str| crate_name(name).ok();
    if let Some(f) = found("duet-core") {
        return match f {
            FoundCrate::Itself => quote!(::duet_core),
            FoundCrate::Name(n) => {
                let id = Ident::new(&n, Span::call_site());
                quote!(::#id)
            }
        };
    }
    for driver in ["duet-sync", "duet-async"] {
        if let Some(FoundCrate::Name(n)) = found(driver) {
            let id = Ident::new(&n, Span::call_site());
            return quote!(::#id::duet_core);
        }
    }
    quote!(::duet_core)
}

#[derive(Default)]
struct FieldAttrs {
    primary_key: bool,
    auto: bool,
    column: Option<String>,
    default: Option<String>,
    skip_insert: bool,
    generated: Option<String>,
    unique: bool,
    index: bool,
    sql_type: Option<String>,
    references: Option<Path>,
    on_delete: Option<String>,
}

fn lit_str(e: &Expr) -> syn::Result<String> {
    match e {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s.value()),
        _ => Err(syn::Error::new_spanned(e, "expected a string literal")),
    }
}

fn parse_field_attrs(attrs: &[syn::Attribute]) -> syn::Result<FieldAttrs> {
    let mut a = FieldAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("duet")) {
        attr.parse_nested_meta(|meta| {
            let p = &meta.path;
            if p.is_ident("primary_key") {
                a.primary_key = true;
            } else if p.is_ident("auto") {
                a.auto = true;
            } else if p.is_ident("unique") {
                a.unique = true;
            } else if p.is_ident("index") {
                a.index = true;
            } else if p.is_ident("skip_insert") {
                a.skip_insert = true;
            } else if p.is_ident("column") {
                a.column = Some(lit_str(&meta.value()?.parse()?)?);
            } else if p.is_ident("default") {
                a.default = Some(lit_str(&meta.value()?.parse()?)?);
            } else if p.is_ident("generated") {
                a.generated = Some(lit_str(&meta.value()?.parse()?)?);
            } else if p.is_ident("sql_type") {
                a.sql_type = Some(lit_str(&meta.value()?.parse()?)?);
            } else if p.is_ident("references") {
                a.references = Some(meta.value()?.parse()?);
            } else if p.is_ident("on_delete") {
                let v = lit_str(&meta.value()?.parse()?)?;
                let action = match v.to_ascii_lowercase().as_str() {
                    "cascade" => "CASCADE",
                    "set null" => "SET NULL",
                    "set default" => "SET DEFAULT",
                    "restrict" => "RESTRICT",
                    "no action" => "NO ACTION",
                    _ => {
                        return Err(meta.error(
                            "on_delete must be one of \"cascade\", \"set null\", \"set default\", \"restrict\", \"no action\"",
                        ))
                    }
                };
                a.on_delete = Some(action.to_string());
            } else {
                return Err(meta.error(
                    "unknown duet field attribute; expected primary_key, auto, column, default, skip_insert, \
                     generated, unique, index, sql_type, references or on_delete",
                ));
            }
            Ok(())
        })?;
    }
    Ok(a)
}

struct StructAttrs {
    table: Option<String>,
    hooks: bool,
}

fn parse_struct_attrs(attrs: &[syn::Attribute]) -> syn::Result<StructAttrs> {
    let mut s = StructAttrs {
        table: None,
        hooks: false,
    };
    for attr in attrs.iter().filter(|a| a.path().is_ident("duet")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("table") {
                s.table = Some(lit_str(&meta.value()?.parse()?)?);
            } else if meta.path.is_ident("hooks") {
                s.hooks = true;
            } else {
                return Err(meta.error("unknown duet struct attribute; expected table or hooks"));
            }
            Ok(())
        })?;
    }
    Ok(s)
}

/// `BlogPost` → `blog_posts`, `Category` → `categories`, `Address` →
/// `addresses`.
fn default_table_name(name: &str) -> String {
    let mut snake = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    let n = snake.len();
    let vowel_before_y = n >= 2 && matches!(snake.as_bytes()[n - 2], b'a' | b'e' | b'i' | b'o' | b'u');
    if snake.ends_with('y') && !vowel_before_y {
        format!("{}ies", &snake[..n - 1])
    } else if ["s", "x", "z", "ch", "sh"].iter().any(|e| snake.ends_with(e)) {
        format!("{snake}es")
    } else {
        format!("{snake}s")
    }
}

/// `i16`/`i32`/`i64`, or `Option` of one: what an identity column holds.
fn is_integer_key(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    let Some(last) = p.path.segments.last() else {
        return false;
    };
    if last.ident == "Option" {
        if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
            if let Some(syn::GenericArgument::Type(inner)) = args.args.first() {
                return is_integer_key(inner);
            }
        }
        return false;
    }
    ["i16", "i32", "i64"].iter().any(|t| last.ident == t)
}

fn is_option(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

fn expand(input: DeriveInput) -> syn::Result<Tokens> {
    let core = core_path();
    let name = &input.ident;
    let sattrs = parse_struct_attrs(&input.attrs)?;
    let table = sattrs.table.unwrap_or_else(|| default_table_name(&name.to_string()));
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(f) => &f.named,
            _ => return Err(syn::Error::new_spanned(name, "Model needs a struct with named fields")),
        },
        _ => return Err(syn::Error::new_spanned(name, "Model can only be derived for a struct")),
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "Model cannot be derived for a generic struct",
        ));
    }

    let mut defs = Vec::new();
    let mut decode = Vec::new();
    let mut decode_in_order = Vec::new();
    let mut values = Vec::new();
    let mut lent = Vec::new();
    let mut consts = Vec::new();
    // Every key field, in the struct's order: one, or several for a
    // composite key.
    let mut pk: Vec<(usize, &Ident, &Type, bool)> = Vec::new();
    // The key's column, for a field that references this very model (a
    // tree, a manager): its META cannot read itself while being built.
    let mut pk_column = None;
    let mut key_fields = 0;
    for f in fields.iter() {
        let a = parse_field_attrs(&f.attrs)?;
        if a.primary_key {
            key_fields += 1;
            let field_name = f.ident.as_ref().expect("named field").to_string();
            pk_column = Some(
                a.column
                    .unwrap_or_else(|| field_name.trim_start_matches("r#").to_string()),
            );
        }
    }
    for (i, f) in fields.iter().enumerate() {
        let ident = f.ident.as_ref().expect("named field");
        let ty = &f.ty;
        let a = parse_field_attrs(&f.attrs)?;
        let field_name = ident.to_string().trim_start_matches("r#").to_string();
        let column = a.column.clone().unwrap_or_else(|| field_name.clone());
        if a.primary_key {
            if a.auto && key_fields > 1 {
                return Err(syn::Error::new_spanned(
                    ident,
                    "auto applies to a one-column key: the columns of a composite key are given by the application",
                ));
            }
            if a.auto && !is_integer_key(ty) {
                return Err(syn::Error::new_spanned(
                    ty,
                    "auto (a database-assigned identity) needs an integer key: i16, i32, i64 or an Option of one",
                ));
            }
            pk.push((i, ident, ty, a.auto));
        } else if a.auto {
            return Err(syn::Error::new_spanned(ident, "auto applies to the primary_key only"));
        }
        let nullable = is_option(ty);
        let (sql_type, create_type) = match &a.sql_type {
            Some(t) => (quote!(#t), quote!(::core::option::Option::None)),
            None => (
                quote!(<#ty as #core::orm::SqlType>::SQL),
                quote!(<#ty as #core::orm::SqlType>::CREATE),
            ),
        };
        let opt_str = |o: &Option<String>| match o {
            Some(s) => quote!(::core::option::Option::Some(#s)),
            None => quote!(::core::option::Option::None),
        };
        let default = opt_str(&a.default);
        let generated = opt_str(&a.generated);
        let on_delete = opt_str(&a.on_delete);
        let skip_insert = a.skip_insert || a.default.is_some();
        let (primary_key, auto, unique, index) = (a.primary_key, a.auto, a.unique, a.index);
        let self_reference = a
            .references
            .as_ref()
            .is_some_and(|p| p.is_ident("Self") || p.is_ident(name));
        if self_reference && key_fields > 1 {
            return Err(syn::Error::new_spanned(
                ident,
                "references needs a one-column key, and this model's key is composite",
            ));
        }
        let references = match &a.references {
            Some(_) if self_reference => {
                let pk_column = pk_column.clone().unwrap_or_default();
                quote!(::core::option::Option::Some((#table, #pk_column)))
            }
            Some(p) => quote!(::core::option::Option::Some((
                <#p as #core::orm::Model>::META.table,
                {
                    ::core::assert!(
                        <#p as #core::orm::Model>::META.key.len() == 1,
                        "references needs a model with a one-column key: the referenced model's key is composite"
                    );
                    <#p as #core::orm::Model>::META.columns[<#p as #core::orm::Model>::META.pk].name
                },
            ))),
            None => quote!(::core::option::Option::None),
        };
        defs.push(quote! {
            #core::orm::ColumnDef {
                name: #column,
                field: #field_name,
                sql_type: #sql_type,
                nullable: #nullable,
                primary_key: #primary_key,
                auto: #auto,
                skip_insert: #skip_insert,
                generated: #generated,
                default: #default,
                unique: #unique,
                index: #index,
                references: #references,
                on_delete: #on_delete,
                create_type: #create_type,
            }
        });
        decode.push(quote!(#ident: row.try_get(at.get(#i))?));
        decode_in_order.push(quote!(#ident: cursor.read()?));
        values.push(quote!(#i => ::std::sync::Arc::new(::core::clone::Clone::clone(&self.#ident))));
        lent.push(quote!(#i => &self.#ident));
        let const_name = format_ident!("{}", field_name.to_uppercase());
        let doc = format!("The `{column}` column.");
        consts.push(quote! {
            #[doc = #doc]
            pub const #const_name: #core::orm::Col<#name, #ty> = #core::orm::Col::new(#table, #column, #i);
        });
        if let Some(parent) = &a.references {
            let (rel, alias) = match field_name.strip_suffix("_id") {
                Some(base) if !base.is_empty() => (base.to_uppercase(), base.to_string()),
                _ => (format!("{}_REL", field_name.to_uppercase()), field_name.clone()),
            };
            let rel = format_ident!("{}", rel);
            let doc = format!("The foreign key `{column}` to [`{}`].", quote!(#parent));
            consts.push(quote! {
                #[doc = #doc]
                pub const #rel: #core::orm::ForeignKey<#name, #parent> = #core::orm::ForeignKey::new(#column, #alias, |m: &#name| {
                    <#ty as #core::orm::FkField<<#parent as #core::orm::Model>::Key>>::fk(&m.#ident)
                });
            });
        }
    }
    if pk.is_empty() {
        return Err(syn::Error::new_spanned(
            name,
            "a model needs a field marked #[duet(primary_key)] (several for a composite key)",
        ));
    }
    let pk_index = pk[0].0;
    let key_indexes: Vec<usize> = pk.iter().map(|k| k.0).collect();
    let (key_type, key_body) = if pk.len() == 1 {
        let (_, ident, ty, auto) = pk[0];
        (
            quote!(<#ty as #core::orm::KeyField>::Key),
            quote!(#core::orm::KeyField::key(&self.#ident, #auto)),
        )
    } else {
        let types = pk
            .iter()
            .map(|(_, _, ty, _)| quote!(<#ty as #core::orm::KeyField>::Key));
        let parts = pk
            .iter()
            .map(|(_, ident, _, _)| quote!(#core::orm::KeyField::key(&self.#ident, false)?));
        (
            quote!((#(#types,)*)),
            quote!(::core::option::Option::Some((#(#parts,)*))),
        )
    };
    let n = fields.len();
    let name_str = name.to_string();
    let table_lit = LitStr::new(&table, Span::call_site());
    let has_hooks = sattrs.hooks;
    let hooks = if sattrs.hooks {
        quote!()
    } else {
        quote!(impl #core::orm::Hooks for #name {})
    };
    Ok(quote! {
        impl #core::orm::Model for #name {
            type Key = #key_type;

            const HAS_HOOKS: bool = #has_hooks;

            const META: &'static #core::orm::ModelMeta = &#core::orm::ModelMeta {
                table: #table_lit,
                name: #name_str,
                columns: &[#(#defs),*],
                pk: #pk_index,
                key: &[#(#key_indexes),*],
            };

            fn from_row(row: &#core::Row, at: #core::orm::Positions<'_>) -> ::core::result::Result<Self, #core::Error> {
                if let #core::orm::Positions::From(start) = at {
                    // Consecutive columns: read front to back.
                    let mut cursor = row.cursor();
                    cursor.skip_to(start);
                    return ::core::result::Result::Ok(#name { #(#decode_in_order),* });
                }
                ::core::result::Result::Ok(#name { #(#decode),* })
            }

            fn value(&self, i: usize) -> #core::orm::Value {
                match i {
                    #(#values,)*
                    _ => panic!("{} has {} columns, not {}", #name_str, #n, i + 1),
                }
            }

            fn field(&self, i: usize) -> &(dyn #core::ToSql + ::core::marker::Sync) {
                match i {
                    #(#lent,)*
                    _ => panic!("{} has {} columns, not {}", #name_str, #n, i + 1),
                }
            }

            fn key(&self) -> ::core::option::Option<Self::Key> {
                #key_body
            }
        }

        #[allow(dead_code)]
        impl #name {
            #(#consts)*
        }

        #hooks
    })
}

/// `migrations!("folder")`: the `.sql` files of `folder` (relative to the
/// crate's `Cargo.toml`) embedded in the binary, as
/// `Result<duet_core::migrate::Migrations, duet_core::Error>`. Each file is
/// `include_str!`'d, so editing one rebuilds the crate; a file added or
/// removed is seen at the next build of the crate.
#[proc_macro]
pub fn migrations(input: TokenStream) -> TokenStream {
    let dir = parse_macro_input!(input as LitStr);
    match expand_migrations(&dir) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_migrations(dir: &LitStr) -> syn::Result<Tokens> {
    let core = core_path();
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .map_err(|_| syn::Error::new(dir.span(), "CARGO_MANIFEST_DIR is not set"))?;
    let path = std::path::Path::new(&root).join(dir.value());
    let entries = std::fs::read_dir(&path)
        .map_err(|e| syn::Error::new(dir.span(), format!("migrations folder {}: {e}", path.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| syn::Error::new(dir.span(), e.to_string()))?.path();
        if p.extension().is_some_and(|e| e == "sql") {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !name.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(syn::Error::new(
                    dir.span(),
                    format!("migration file {name:?} does not start with a version number"),
                ));
            }
            files.push((name, p.to_string_lossy().into_owned()));
        }
    }
    files.sort();
    let entries = files.iter().map(|(name, full)| quote!((#name, include_str!(#full))));
    Ok(quote!(#core::migrate::Migrations::from_files([#(#entries),*])))
}
