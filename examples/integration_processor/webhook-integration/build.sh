#!/bin/sh

uv export --frozen --no-dev --no-editable --no-emit-project --no-emit-package fleetcloud \
   --quiet -o requirements.txt

uv pip install \
   --no-deps \
   --no-installer-metadata \
   --no-compile-bytecode \
   --python-platform x86_64-manylinux2014 \
   --python 3.11 \
   --quiet \
   --target packages_export \
   --refresh \
   -r requirements.txt

rm -f package.zip
mkdir -p packages_export

cd packages_export
zip -rq ../package.zip .
cd ..

zip -rq package.zip src

echo "OK"
