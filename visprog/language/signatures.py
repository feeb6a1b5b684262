"""Module declarations and the registry that resolves module names.

A module is declared once, as a typed Python function with a docstring::

    @module(aliases=["COUNT"])
    def Count(box: Objects) -> int:
        \"\"\"Count the objects.

        Args:
            box: the objects to count.
        \"\"\"
        return len(box)

The signature's keyword parameters are the program's argument names and
their types; the docstring's summary and ``Args:`` are the descriptions the
checker, ``visprog modules`` and the planner show. A parameter annotated
:class:`~visprog.running.runtime.Context` is not a program argument: the interpreter
passes the run context there.

A module's settings that do not belong in a program (a threshold, a seed, the
backend and model) are its *options*, declared once with their type, default
and help::

    @module(backends={...}, options=[Option("nms_iou", float, 0.5, "IoU above which a weaker box is dropped")])

The config file (``[modules.Loc] nms_iou = 0.3``), ``--option Loc.nms_iou=0.3``
and ``Runtime(modules=...)`` are validated against these declarations
(:meth:`Registry.validate_options`): values are converted to the declared type,
and an unknown option is an error with a suggestion. A module with backends
has the options ``backend`` and ``model`` too.

A parameter may have a *validator*, declared with ``validate=``: a function of the
argument's value that returns None when the value is fine, else what is wrong (with a
suggestion where one helps). The checker runs it on every literal argument
(``emoji=':p'``, ``max=0``), so a bad value is refused before any model runs::

    @module(validate={"max": at_least(1)})

A module may name the spellings it should be *suggested* for (``suggest_for=``):
an unknown module name that is one of them is still refused, but the diagnostic
says which module was meant (``CROP_TOP`` -> ``CropAbove``). Unlike an alias,
such a spelling never resolves.

Built-in modules and plugins register the same way: through the entry-point
group ``visprog.modules``, whose entries name a Python module (every
:class:`ModuleSpec` in it is registered, in definition order) or a single
:class:`ModuleSpec`.
"""

from __future__ import annotations

import difflib
import inspect
import threading
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from visprog.errors import RegistrationError, did_you_mean
from visprog.language.docstrings import parse_docstring
from visprog.language.frames import Cropped, frame_param
from visprog.language.options import Option, OptionError, check_options, standard_options
from visprog.language.tokens import is_name
from visprog.language.values import Type, type_of_annotation

__all__ = [
    "CONTEXT_MARKER",
    "ModuleSpec",
    "Option",
    "OptionError",
    "Param",
    "Registry",
    "Validator",
    "accepts",
    "at_least",
    "module",
    "normalize",
    "not_empty",
    "one_of",
]

#: A parameter whose annotation has this attribute set to True receives the run context
#: (:class:`visprog.running.runtime.Context`), not a program argument.
CONTEXT_MARKER = "__visprog_context__"

_MISSING: Any = inspect.Parameter.empty


#: A parameter's check of a literal argument: None when the value is fine, else what is wrong.
Validator = Callable[[Any], str | None]


def at_least(minimum: int) -> Validator:
    """A validator for a number that must be at least ``minimum`` (constrained generation writes no smaller one)."""

    def check(value: Any) -> str | None:
        return None if value >= minimum else f"must be at least {minimum}, got {value!r}"

    check.__doc__ = f"at least {minimum}"
    setattr(check, "minimum", minimum)  # noqa: B010 - what constrained generation reads (see accepts)
    return check


def one_of(choices: Callable[[], Iterable[str]], check: Validator) -> Validator:
    """``check``, declared to accept exactly the strings ``choices()`` gives (called when a grammar is built),
    so constrained generation writes only those (see :func:`accepts`)."""
    setattr(check, "choices", choices)  # noqa: B010
    return check


def accepts(validator: Validator | None) -> dict[str, Any]:
    """What a validator says of the literals it accepts, for constrained generation: ``minimum`` (a number
    no smaller), ``nonblank`` (text with more than spaces and commas), ``choices`` (a function giving every
    accepted string). Empty for a validator that says nothing: then only the checker knows."""
    if validator is None:
        return {}
    return {k: getattr(validator, k) for k in ("minimum", "nonblank", "choices") if hasattr(validator, k)}


def not_empty(what: str) -> Validator:
    """A validator for a string or list that must have something in it besides spaces and commas;
    ``what`` says what it should hold ("an object to find")."""

    def check(value: Any) -> str | None:
        items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
        return None if any(i.strip() for i in items) else f"needs {what}, got {value!r}"

    check.__doc__ = f"not empty ({what})"
    setattr(check, "nonblank", True)  # noqa: B010
    return check


def normalize(name: str) -> str:
    """Module names match case-insensitively and ignoring underscores."""
    return name.replace("_", "").lower()


@dataclass(frozen=True)
class Param:
    """One argument of a module as the language sees it."""

    name: str
    type: Type
    description: str
    default: Any = _MISSING
    optional: bool = False
    #: checks a literal argument at check time (see :data:`Validator`)
    validator: Validator | None = field(default=None, compare=False)

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def signature(self) -> str:
        t = f"{self.type}" + (" | None" if self.optional else "")
        if self.required:
            return f"{self.name}: {t}"
        return f"{self.name}: {t} = {self.default!r}"


BatchFn = Callable[..., Sequence[Any]]


@dataclass(frozen=True)
class ModuleSpec:
    """A declared module: its name, aliases, typed parameters, output and implementation."""

    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...]
    returns: Type
    summary: str
    description: str
    aliases: tuple[str, ...] = ()
    batch: BatchFn | None = None
    context_param: str | None = None
    source: str = "python"
    returns_description: str = ""
    #: backend name -> default model (a hub id), or None for a backend that needs no download
    backends: Mapping[str, str | None] = field(default_factory=dict)
    default_backend: str | None = None
    #: the options the module reads (``backend`` and ``model`` first when it has backends)
    options: tuple[Option, ...] = ()
    #: other spellings the module is suggested for when a program uses one (never resolved, unlike aliases)
    suggest_for: tuple[str, ...] = ()
    #: the Image parameter whose frame the module works in: its objects are placed on that image, and
    #: an image or objects it returns are in that frame (see :mod:`visprog.language.frames`)
    frame: str | None = None
    #: the module returns a crop of its ``frame`` image (its return type is ``Cropped``)
    crops: bool = False

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def option(self, name: str) -> Option | None:
        for o in self.options:
            if o.name == name:
                return o
        return None

    def validate_option(self, name: str, value: Any, source: str) -> Any:
        """``value`` converted to option ``name``'s type; :class:`OptionError` naming ``source`` when the
        module has no such option or the value does not fit."""
        declared = self.option(name)
        if declared is None:
            names = [o.name for o in self.options]
            if not names:
                raise OptionError(f"{source}: {self.name} has no options (it was given '{name}')")
            hint = did_you_mean(name, names)
            raise OptionError(f"{source}: {self.name} has no option '{name}'{hint}; its options: {', '.join(names)}")
        try:
            return declared.convert(value)
        except ValueError as e:
            if name == "backend" and self.backends:
                raise OptionError(
                    f"{source}: {self.name} has no backend {value!r}; choose one of {', '.join(self.backends)}"
                ) from None
            raise OptionError(f"{source}: {self.name} option '{name}' {e.args[0]}") from None

    def signature(self) -> str:
        args = ", ".join(p.signature() for p in self.params)
        return f"{self.name}({args}) -> {self.returns}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the implementation directly (handy in tests and notebooks)."""
        return self.fn(*args, **kwargs)


def _build_spec(
    fn: Callable[..., Any],
    name: str | None,
    aliases: Iterable[str],
    batch: BatchFn | None,
    backends: Mapping[str, str | None] | None = None,
    default_backend: str | None = None,
    options: Iterable[Option] = (),
    validate: Mapping[str, Validator] | None = None,
    suggest_for: Iterable[str] = (),
    frame: str | None = None,
) -> ModuleSpec:
    mod_name = name or fn.__name__
    where = f"module '{mod_name}' ({getattr(fn, '__module__', '?')}.{fn.__qualname__})"
    if not (is_name(mod_name) and mod_name[0].isalpha()):
        raise RegistrationError(f"{where}: name must be letters, digits and underscores")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # a NameError in a string annotation, for instance
        raise RegistrationError(f"{where}: cannot resolve type hints: {e}") from e
    doc = inspect.getdoc(fn)
    if not doc:
        raise RegistrationError(f"{where}: needs a docstring with a summary and an 'Args:' section")
    summary, description, arg_docs, returns_doc = parse_docstring(doc)
    params: list[Param] = []
    context_param = None
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise RegistrationError(f"{where}: parameter '{p.name}': *args and **kwargs are not allowed")
        if p.kind is p.POSITIONAL_ONLY:
            raise RegistrationError(f"{where}: parameter '{p.name}' must be usable as a keyword")
        if p.name not in hints:
            raise RegistrationError(f"{where}: parameter '{p.name}' has no type hint")
        hint = hints[p.name]
        if getattr(hint, CONTEXT_MARKER, False) is True:
            context_param = p.name
            continue
        try:
            ptype, optional = type_of_annotation(hint)
        except TypeError as e:
            raise RegistrationError(f"{where}: parameter '{p.name}': {e}") from None
        if p.name not in arg_docs:
            raise RegistrationError(
                f"{where}: parameter '{p.name}' is not described in the docstring's 'Args:' section"
            )
        params.append(Param(p.name, ptype, arg_docs[p.name], p.default, optional))
    if validate is not None and not isinstance(validate, Mapping):
        raise RegistrationError(f"{where}: validate= takes a dict of parameter name -> validator")
    validators = dict(validate or {})
    for pname, check in validators.items():
        if pname not in {p.name for p in params}:
            raise RegistrationError(f"{where}: validate= names '{pname}', which is not one of its parameters")
        if not callable(check):
            raise RegistrationError(f"{where}: the validator of '{pname}' must be a function of the value")
    params = [replace(p, validator=validators.get(p.name)) for p in params]
    if isinstance(suggest_for, str):
        raise RegistrationError(f"{where}: suggest_for= takes a list of names")
    suggest_for = tuple(suggest_for)
    for spelling in suggest_for:
        if not (isinstance(spelling, str) and is_name(spelling)):
            raise RegistrationError(f"{where}: suggest_for= entry {spelling!r} is not a name")
    if "return" not in hints:
        raise RegistrationError(f"{where}: the return type has no type hint")
    crops = hints["return"] is Cropped
    try:
        returns = Type.IMAGE if crops else type_of_annotation(hints["return"])[0]
    except TypeError as e:
        raise RegistrationError(f"{where}: return type: {e}") from None
    frame = frame_param(where, [p.name for p in params if p.type is Type.IMAGE], frame, crops)
    extra = set(arg_docs) - {p.name for p in params} - ({context_param} if context_param else set())
    if extra:
        raise RegistrationError(f"{where}: the docstring describes unknown parameter(s) {', '.join(sorted(extra))}")
    if batch is not None and not callable(batch):
        raise RegistrationError(f"{where}: batch= must be a callable")
    backends = dict(backends or {})
    if default_backend is None and backends:
        default_backend = next(iter(backends))
    if default_backend is not None and default_backend not in backends:
        raise RegistrationError(f"{where}: default_backend '{default_backend}' is not one of its backends")
    if backends and context_param is None:
        raise RegistrationError(f"{where}: a module with backends needs a parameter annotated Context")
    if isinstance(options, (str, Option)) or not isinstance(options, Iterable):
        raise RegistrationError(f"{where}: options= takes a list of Option(name, type, default, help)")
    declared = list(options)
    check_options(where, declared, backends)
    if declared and context_param is None:
        raise RegistrationError(f"{where}: a module with options needs a parameter annotated Context to read them")
    all_options = standard_options(declared, backends, default_backend)
    return ModuleSpec(
        name=mod_name,
        fn=fn,
        params=tuple(params),
        returns=returns,
        summary=summary,
        description=description,
        aliases=tuple(aliases),
        batch=batch,
        context_param=context_param,
        returns_description=returns_doc,
        backends=backends,
        default_backend=default_backend,
        options=tuple(all_options),
        suggest_for=suggest_for,
        frame=frame,
        crops=crops,
    )


@typing.overload
def module(fn: Callable[..., Any], /) -> ModuleSpec: ...


@typing.overload
def module(
    *,
    name: str | None = None,
    aliases: Iterable[str] = (),
    batch: BatchFn | None = None,
    backends: Mapping[str, str | None] | None = None,
    default_backend: str | None = None,
    options: Iterable[Option] = (),
    validate: Mapping[str, Validator] | None = None,
    suggest_for: Iterable[str] = (),
    frame: str | None = None,
) -> Callable[[Callable[..., Any]], ModuleSpec]: ...


def module(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    aliases: Iterable[str] = (),
    batch: BatchFn | None = None,
    backends: Mapping[str, str | None] | None = None,
    default_backend: str | None = None,
    options: Iterable[Option] = (),
    validate: Mapping[str, Validator] | None = None,
    suggest_for: Iterable[str] = (),
    frame: str | None = None,
) -> ModuleSpec | Callable[[Callable[..., Any]], ModuleSpec]:
    """Declare a module from a typed function and its docstring.

    Args:
        fn: the implementation; its keyword parameters are the program's arguments.
        name: the canonical name (defaults to the function's name).
        aliases: other names that resolve to this module (VisProg's spellings).
        batch: an implementation that takes ``(calls, ctx)``, a list of argument
            dicts and the run context, and returns one output per call. The
            interpreter uses it for steps of this module that are ready together.
        backends: the module's backends, each with its default model (a hub id,
            or None when it needs no download); users pick one with
            ``--backend MODULE=NAME`` and a model with ``--model MODULE=ID``.
        default_backend: the backend used when none is chosen (default: the first).
        options: the module's settings (:class:`Option`: name, type, default, help), given in
            the config file's ``[modules.NAME]`` table, with ``--option NAME.OPTION=VALUE`` or
            ``Runtime(modules=...)`` and read with ``ctx.option(name)``. A module with
            backends also has ``backend`` and ``model``.
        validate: parameter name -> :data:`Validator`, run by the checker on that parameter's
            literal arguments: it returns None for a good value, else the message (e.g.
            ``validate={"max": at_least(1)}``).
        suggest_for: other spellings (a VisProg name such as ``CROP_TOP``) for which the checker
            suggests this module; a program using one is still refused.
        frame: the Image parameter whose frame the module works in (default: its only Image
            parameter): objects passed to it are mapped onto that image, and what it returns is
            in that frame. A module whose return type is :class:`~visprog.language.frames.Cropped`
            returns a crop of that image (see :mod:`visprog.language.frames`).
    """

    def wrap(f: Callable[..., Any]) -> ModuleSpec:
        return _build_spec(f, name, aliases, batch, backends, default_backend, options, validate, suggest_for, frame)

    return wrap(fn) if fn is not None else wrap


@dataclass
class Registry:
    """Modules by canonical name, looked up by any spelling of a name or alias."""

    _specs: dict[str, ModuleSpec] = field(default_factory=dict)
    _index: dict[str, str] = field(default_factory=dict)
    #: normalised ``suggest_for`` spelling -> canonical name
    _suggested: dict[str, str] = field(default_factory=dict)
    #: the entry points already loaded into this registry (see :mod:`visprog.running.plugins`)
    loaded_plugins: set[str] = field(default_factory=set)
    #: third-party entry points that could not be loaded, each error naming its entry point and cause;
    #: the modules of every other entry point are registered
    plugin_errors: list[RegistrationError] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def register(self, spec: ModuleSpec, *, source: str | None = None) -> ModuleSpec:
        if not isinstance(spec, ModuleSpec):
            raise RegistrationError(f"cannot register {spec!r}: declare it with @visprog.module first")
        if source is not None:
            spec = _replace_source(spec, source)
        with self.lock:
            for n in (spec.name, *spec.aliases):
                key = normalize(n)
                owner = self._index.get(key)
                if owner is not None and self._specs[owner] is not spec:
                    other = self._specs[owner]
                    raise RegistrationError(
                        f"module '{spec.name}' (from {spec.source}): name '{n}' is already "
                        f"taken by module '{other.name}' (from {other.source})"
                    )
            self._specs[spec.name] = spec
            for n in (spec.name, *spec.aliases):
                self._index[normalize(n)] = spec.name
            for n in spec.suggest_for:
                self._suggested.setdefault(normalize(n), spec.name)
        return spec

    def register_all(self, specs: Iterable[ModuleSpec], *, source: str | None = None) -> None:
        """Register several modules: all of them, or none when one name is taken."""
        specs = list(specs)
        with self.lock:
            trial = self.copy()
            for s in specs:
                trial.register(s, source=source)
            for s in specs:
                self.register(s, source=source)

    def get(self, name: str) -> ModuleSpec | None:
        key = self._index.get(normalize(name))
        return self._specs[key] if key is not None else None

    def __getitem__(self, name: str) -> ModuleSpec:
        spec = self.get(name)
        if spec is None:
            hint = self.suggest(name)
            raise KeyError(f"unknown module '{name}'" + (f" (did you mean '{hint}'?)" if hint else ""))
        return spec

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize(name) in self._index

    def __iter__(self) -> Iterator[ModuleSpec]:
        return iter(list(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> list[str]:
        return list(self._specs)

    def suggest(self, name: str) -> str | None:
        """The canonical name closest to ``name``, if any is close: the module that declares ``name``
        in its ``suggest_for``, else the one with the closest name or alias, else the one with the
        closest ``suggest_for`` spelling."""
        key = normalize(name)
        if key in self._suggested:
            return self._suggested[key]
        for names in (self._index, self._suggested):
            match = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
            if match:
                return names[match[0]]
        return None

    def copy(self) -> Registry:
        new = Registry()
        new._specs = dict(self._specs)
        new._index = dict(self._index)
        new._suggested = dict(self._suggested)
        new.loaded_plugins = set(self.loaded_plugins)
        new.plugin_errors = list(self.plugin_errors)
        return new

    def resolve(self, name: str, source: str) -> ModuleSpec:
        """The module called ``name`` (any spelling); :class:`OptionError` naming ``source`` when there is none."""
        spec = self.get(name)
        if spec is None:
            hint = self.suggest(name)
            raise OptionError(f"{source}: unknown module '{name}'" + (f" (did you mean '{hint}'?)" if hint else ""))
        return spec

    def validate_options(self, settings: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
        """Per-module options (``{"Loc": {"nms_iou": 0.3}}``) checked against the modules' declarations.

        Returns them under each module's canonical name, every value converted to its declared type
        (None values, "not set", are left out). ``source`` says where they were given, for the
        :class:`OptionError` raised at the first unknown module, unknown option or unfit value.
        """
        out: dict[str, dict[str, Any]] = {}
        for name, table in settings.items():
            spec = self.resolve(str(name), source)
            if not isinstance(table, Mapping):
                raise OptionError(
                    f"{source}: the options of {spec.name} must be a table of NAME = VALUE, got {table!r}"
                )
            values = out.setdefault(spec.name, {})
            for key, value in table.items():
                converted = spec.validate_option(str(key), value, source) if value is not None else None
                if converted is None:
                    values.pop(str(key), None)
                else:
                    values[str(key)] = converted
        return out


def _replace_source(spec: ModuleSpec, source: str) -> ModuleSpec:
    return spec if spec.source == source else replace(spec, source=source)
