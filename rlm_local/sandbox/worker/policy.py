"""RestrictedPython policy for model-written analysis code (worker side only).

On top of the stock transformer this allows what models actually write (augmented assignment on items
and attributes, annotated assignment, ``nonlocal``, common dunder methods in classes, ``super()``,
reading ``__name__``, ``__class__``, ``__doc__``) by rewriting it into calls of guards from guards.py, and echoes a cell's last
expression like a notebook. Everything else (names starting with '_', ``match``, ``except*``, async,
``exec``/``eval``) stays rejected at compile time with RestrictedPython's readable messages.
"""

from __future__ import annotations

import ast

from RestrictedPython import compile_restricted_exec
from RestrictedPython.transformer import IOPERATOR_TO_STR, RestrictingNodeTransformer, copy_locations

# Dunder methods a sandbox class may define. Deliberately absent: __getattr__, __getattribute__,
# __setattr__, __delattr__, __del__, __reduce__*, __init_subclass__, __class_getitem__, __format__,
# __new__, __set_name__, __get__/__set__ (descriptors run inside host lookups).
DUNDER_METHODS = frozenset(
    """
__init__ __post_init__ __repr__ __str__ __len__ __iter__ __next__ __contains__ __getitem__ __setitem__
__delitem__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __hash__ __bool__ __call__ __enter__ __exit__
__add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__ __rtruediv__
__floordiv__ __mod__ __pow__ __neg__ __pos__ __abs__ __and__ __or__ __xor__ __invert__ __int__ __float__
__index__ __round__ __reversed__ __missing__
""".split()
)

# Dunder attributes code may read (the getattr guard decides per object; __class__ acts like type()).
READABLE_DUNDERS = frozenset({"__name__", "__qualname__", "__class__", "__doc__"})


class SandboxPolicy(RestrictingNodeTransformer):
    def check_name(self, node, name, allow_magic_methods=False):
        if (
            allow_magic_methods
            and name in DUNDER_METHODS
            and isinstance(node, ast.FunctionDef)
            and node.col_offset != 0
        ):
            return
        super().check_name(node, name, allow_magic_methods=False)

    def visit_Nonlocal(self, node):
        for name in node.names:
            self.check_name(node, name)
        return node

    def visit_AnnAssign(self, node):
        if node.value is None:
            stmt = ast.Pass()
            copy_locations(stmt, node)
            return stmt
        new = ast.Assign(targets=[node.target], value=node.value)
        copy_locations(new, node)
        return self.visit(new)

    def visit_AugAssign(self, node):
        target = node.target
        if isinstance(target, ast.Subscript):
            obj = self.visit(target.value)
            key = self._slice_to_expr(self.visit(target.slice))
            call = self._call(
                "_inplace_item_", obj, key, ast.Constant(IOPERATOR_TO_STR[type(node.op)]), self.visit(node.value)
            )
        elif isinstance(target, ast.Attribute):
            if target.attr.startswith("_"):
                self.error(node, f'"{target.attr}" is an invalid attribute name because it starts with "_".')
                return node
            obj = self.visit(target.value)
            call = self._call(
                "_inplace_attr_",
                obj,
                ast.Constant(target.attr),
                ast.Constant(IOPERATOR_TO_STR[type(node.op)]),
                self.visit(node.value),
            )
        else:  # a plain name: `x += y` is as safe as `x = x + y`; no guard call in hot loops
            self.check_name(node, target.id)
            node.value = self.visit(node.value)
            return node
        stmt = ast.Expr(value=call)
        copy_locations(stmt, node)
        ast.fix_missing_locations(stmt)
        return stmt

    def visit_Attribute(self, node):
        if isinstance(node.ctx, ast.Load):
            if node.attr in READABLE_DUNDERS:
                call = self._call("_getattr_", self.visit(node.value), ast.Constant(node.attr))
                copy_locations(call, node)
                return call
            if node.attr in DUNDER_METHODS and self._is_super_call(node.value):
                # super().__init__ / super(C, obj).__init__: the super object is made in the method's own
                # frame (zero-argument super needs it) and checked at run time (guards._super_attr).
                call = self._call("_super_attr_", self.visit(node.value), ast.Constant(node.attr))
                copy_locations(call, node)
                ast.fix_missing_locations(call)
                return call
        return super().visit_Attribute(node)

    def visit_Module(self, node):
        node = super().visit_Module(node)
        if node.body and isinstance(node.body[-1], ast.Expr):
            last = node.body[-1]
            last.value = self._call("_echo_", last.value)
            copy_locations(last.value, last)
            ast.fix_missing_locations(last)
        return node

    # helpers -----------------------------------------------------------------------------------------
    @staticmethod
    def _call(func: str, *args: ast.expr) -> ast.Call:
        return ast.Call(func=ast.Name(func, ast.Load()), args=list(args), keywords=[])

    def _slice_to_expr(self, key):
        if isinstance(key, ast.Slice):
            parts = [p if p is not None else ast.Constant(None) for p in (key.lower, key.upper, key.step)]
            new = self._call("slice", *parts)
            copy_locations(new, key)
            return new
        return key

    @staticmethod
    def _is_super_call(node) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "super"
            and not node.keywords
        )


def compile_cell(source: str, filename: str):
    """Returns (code object or None, list of readable error lines)."""
    result = compile_restricted_exec(source, filename=filename, policy=SandboxPolicy)
    return result.code, list(result.errors)
